//! Fashion-MNIST read from IDX files.
//!
//! The Debian package `dataset-fashion-mnist` installs the four gzipped IDX
//! files of Fashion-MNIST in [`DEFAULT_DIR`]; uncompressed copies (the same
//! names without `.gz`) are accepted too. Nothing is ever downloaded: when the
//! files are absent the error says which package to install.
//!
//! IDX is a tiny format: two zero bytes, an element type byte, the number of
//! dimensions, each dimension as a big-endian `u32`, then the elements. Only
//! unsigned bytes (type `0x08`) are needed here. Files are checked strictly
//! (header, dimensions, exact payload length, gzip integrity) because a
//! silently truncated dataset would quietly skew every result built on it.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::{DataError, Dataset, Image, ImageShape, Result};

/// Where the Debian package `dataset-fashion-mnist` puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Side of a Fashion-MNIST image.
pub const SIDE: usize = 28;

/// The ten Fashion-MNIST classes, by label.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which half of Fashion-MNIST to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// 60 000 training images (`train-*`).
    Train,
    /// 10 000 test images (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The content of an IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Elements in row-major order; `data.len()` is the product of `dims`.
    pub data: Vec<u8>,
}

fn format_error(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A read error of the (possibly decompressing) stream: damaged content is a
/// format error, anything else an I/O error.
fn stream_error(path: &Path, gzip: bool, err: std::io::Error) -> DataError {
    match err.kind() {
        ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::UnexpectedEof => {
            let what = if gzip {
                "corrupt or truncated gzip stream"
            } else {
                "unreadable data"
            };
            format_error(path, format!("{what}: {err}"))
        }
        _ => DataError::Io {
            path: path.to_path_buf(),
            source: err,
        },
    }
}

/// Reads exactly `buf.len()` bytes, or reports how many were available.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads an IDX file of unsigned bytes, gzipped (recognised by its magic
/// bytes, whatever the name) or plain. Damaged files (bad magic, unsupported
/// type, short or overlong payload, gzip errors) are [`DataError::Format`]
/// naming the path and the problem.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_idx_from(BufReader::new(file), path)
}

/// As [`read_idx`], from any byte source; `path` only names it in errors.
/// Memory grows with the bytes that arrive, never with what the header
/// claims.
pub fn read_idx_from(mut source: impl BufRead, path: &Path) -> Result<IdxArray> {
    let gzip = source
        .fill_buf()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read + '_> = if gzip {
        Box::new(MultiGzDecoder::new(source))
    } else {
        Box::new(source)
    };
    let reader = reader.as_mut();
    let read = |reader: &mut dyn Read, buf: &mut [u8]| {
        fill(reader, buf).map_err(|e| stream_error(path, gzip, e))
    };

    let mut magic = [0u8; 4];
    if read(reader, &mut magic)? < 4 {
        return Err(format_error(
            path,
            "file ends inside the 4-byte IDX magic number",
        ));
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(format_error(
            path,
            format!("bad IDX magic {magic:02x?}: the first two bytes must be zero"),
        ));
    }
    if magic[2] != 0x08 {
        return Err(format_error(
            path,
            format!(
                "unsupported IDX element type 0x{:02x} (only 0x08, unsigned byte, is supported)",
                magic[2]
            ),
        ));
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(format_error(path, "IDX header declares zero dimensions"));
    }
    let mut header = vec![0u8; 4 * ndims];
    let got = read(reader, &mut header)?;
    if got < header.len() {
        return Err(format_error(
            path,
            format!(
                "file ends inside the dimension list ({got} of {} bytes)",
                header.len()
            ),
        ));
    }
    let dims: Vec<usize> = header
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format_error(path, format!("dimensions {dims:?} overflow")))?;

    // Grow the buffer as data arrives rather than trusting the header with
    // one huge allocation.
    let mut data = Vec::new();
    reader
        .take(expected as u64)
        .read_to_end(&mut data)
        .map_err(|e| stream_error(path, gzip, e))?;
    if data.len() != expected {
        return Err(format_error(
            path,
            format!(
                "truncated payload: dimensions {dims:?} need {expected} bytes, found {}",
                data.len()
            ),
        ));
    }
    // Reading on to the end also makes the decoder verify the gzip trailer.
    let mut extra = [0u8; 1];
    if read(reader, &mut extra)? > 0 {
        return Err(format_error(
            path,
            format!("trailing bytes after the {expected}-byte payload"),
        ));
    }
    Ok(IdxArray { dims, data })
}

/// The file `name` (or `name.gz`) in `dir`, preferring the gzipped one.
fn locate(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(DataError::Missing { path: gz })
    }
}

/// Fashion-MNIST images (1x28x28, pixels = byte / 255) with labels 0..9.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl FashionMnist {
    /// Loads `split` from `dir` (normally [`DEFAULT_DIR`]), keeping the first
    /// `limit` images when given. A missing directory or file is
    /// [`DataError::Missing`] naming the full path.
    pub fn load(dir: &Path, split: Split, limit: Option<usize>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DataError::Missing {
                path: dir.to_path_buf(),
            });
        }
        let prefix = split.prefix();
        let images_path = locate(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = locate(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let images = read_idx(&images_path)?;
        let labels = read_idx(&labels_path)?;

        let [count, h, w] = images.dims[..] else {
            return Err(format_error(
                &images_path,
                format!("expected 3 dimensions, found {:?}", images.dims),
            ));
        };
        if (h, w) != (SIDE, SIDE) {
            return Err(format_error(
                &images_path,
                format!("expected {SIDE}x{SIDE} images, found {h}x{w}"),
            ));
        }
        let [label_count] = labels.dims[..] else {
            return Err(format_error(
                &labels_path,
                format!("expected 1 dimension, found {:?}", labels.dims),
            ));
        };
        if label_count != count {
            return Err(format_error(
                &labels_path,
                format!(
                    "{label_count} labels for {count} images in {}",
                    images_path.display()
                ),
            ));
        }
        if let Some(pos) = labels
            .data
            .iter()
            .position(|&l| l as usize >= CLASS_NAMES.len())
        {
            return Err(format_error(
                &labels_path,
                format!("label {} at {pos} is not in 0..10", labels.data[pos]),
            ));
        }
        let keep = limit.map_or(count, |n| n.min(count));
        let mut image_data = images.data;
        image_data.truncate(keep * SIDE * SIDE);
        let mut label_data = labels.data;
        label_data.truncate(keep);
        Ok(Self {
            images: image_data,
            labels: label_data,
        })
    }
}

impl Dataset for FashionMnist {
    fn shape(&self) -> ImageShape {
        ImageShape {
            channels: 1,
            height: SIDE,
            width: SIDE,
        }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    /// The image at `index % len()`. Panics on an empty dataset.
    fn get(&self, index: usize) -> Image {
        assert!(
            !self.labels.is_empty(),
            "FashionMnist::get on an empty dataset"
        );
        let i = index % self.labels.len();
        let bytes = &self.images[i * SIDE * SIDE..(i + 1) * SIDE * SIDE];
        Image {
            pixels: bytes.iter().map(|&b| f32::from(b) / 255.0).collect(),
            part_map: None,
            object_map: None,
            label: Some(u32::from(self.labels[i])),
        }
    }

    fn num_classes(&self) -> Option<usize> {
        Some(CLASS_NAMES.len())
    }
}

#[cfg(test)]
mod tests;
