//! Tests of the IDX reader and of `FashionMnist`: well-formed and damaged files
//! written to a temporary directory, and the installed data when present.

use super::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;

/// A fresh directory under the system temp dir, unique per test and run.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glom-idx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error for `bytes` written to `name`, checking that it names the file.
fn format_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = write(dir, name, bytes);
    let err = read_idx(&path).expect_err(name);
    assert!(matches!(err, DataError::Format { .. }), "{name}: {err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn reads_plain_and_gzipped_idx() {
    let dir = temp_dir("read");
    let data: Vec<u8> = (0..24).collect();
    let bytes = idx_bytes(&[2, 3, 4], &data);
    let want = IdxArray {
        dims: vec![2, 3, 4],
        data,
    };
    assert_eq!(
        read_idx(&write(&dir, "a-idx3-ubyte", &bytes)).unwrap(),
        want
    );
    assert_eq!(
        read_idx(&write(&dir, "a-idx3-ubyte.gz", &gzip(&bytes))).unwrap(),
        want
    );
    let empty = idx_bytes(&[0], &[]);
    assert_eq!(
        read_idx(&write(&dir, "empty", &empty)).unwrap().data,
        Vec::<u8>::new()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_files_are_format_errors_naming_the_path() {
    let dir = temp_dir("damaged");
    let good = idx_bytes(&[2, 5], &[7; 10]);
    let msg = format_err(&dir, "short", &good[..good.len() - 1]);
    assert!(msg.contains("truncated payload"), "{msg}");
    let msg = format_err(&dir, "magic", &[&[1u8, 0][..], &good[2..]].concat());
    assert!(msg.contains("magic"), "{msg}");
    let mut wrong_type = good.clone();
    wrong_type[2] = 0x0D;
    let msg = format_err(&dir, "type", &wrong_type);
    assert!(msg.contains("0x0d"), "{msg}");
    let msg = format_err(&dir, "trailing", &[&good[..], &[0]].concat());
    assert!(msg.contains("trailing"), "{msg}");
    let msg = format_err(&dir, "header", &good[..6]);
    assert!(msg.contains("dimension"), "{msg}");
    let msg = format_err(&dir, "tiny", &[0, 0]);
    assert!(msg.contains("magic"), "{msg}");
    let gz = gzip(&good);
    let msg = format_err(&dir, "cut.gz", &gz[..gz.len() - 6]);
    assert!(msg.contains("gzip"), "{msg}");
    let mut flipped = gz.clone();
    let last = flipped.len() - 5; // inside the CRC-32 of the trailer
    flipped[last] ^= 0xff;
    format_err(&dir, "crc.gz", &flipped);
    format_err(&dir, "trailing.gz", &[&gz[..], b"junk"].concat());
    format_err(
        &dir,
        "trailing-inside.gz",
        &gzip(&[&good[..], &[1, 2]].concat()),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_data_names_the_path_and_the_package() {
    let dir = std::env::temp_dir().join(format!("glom-idx-{}-nowhere/fashion", std::process::id()));
    let msg = FashionMnist::load(&dir, Split::Test, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(msg.contains("dataset-fashion-mnist"), "{msg}");

    let dir = temp_dir("half");
    let msg = FashionMnist::load(&dir, Split::Train, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    assert!(msg.contains("dataset-fashion-mnist"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loads_a_small_split_and_checks_counts() {
    let dir = temp_dir("load");
    let pixels: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 256) as u8).collect();
    write(
        &dir,
        "t10k-images-idx3-ubyte.gz",
        &gzip(&idx_bytes(&[3, 28, 28], &pixels)),
    );
    write(&dir, "t10k-labels-idx1-ubyte", &idx_bytes(&[3], &[9, 0, 4]));
    let data = FashionMnist::load(&dir, Split::Test, None).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(
        data.shape(),
        ImageShape {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    assert_eq!(data.num_classes(), Some(10));
    let img = data.get(4);
    assert_eq!(img.label, Some(0));
    assert_eq!(img.pixels[0], f32::from(pixels[28 * 28]) / 255.0);
    assert!(img.part_map.is_none() && img.object_map.is_none());
    let two = FashionMnist::load(&dir, Split::Test, Some(2)).unwrap();
    assert_eq!((two.len(), two.get(2).label), (2, Some(9)));

    write(&dir, "t10k-labels-idx1-ubyte", &idx_bytes(&[2], &[9, 0]));
    let msg = FashionMnist::load(&dir, Split::Test, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("2 labels for 3 images"), "{msg}");
    write(
        &dir,
        "t10k-labels-idx1-ubyte",
        &idx_bytes(&[3], &[9, 10, 4]),
    );
    let msg = FashionMnist::load(&dir, Split::Test, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("label 10"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loads_the_installed_test_split() {
    let dir = Path::new(DEFAULT_DIR);
    if !dir.join("t10k-images-idx3-ubyte.gz").is_file()
        && !dir.join("t10k-images-idx3-ubyte").is_file()
    {
        assert!(
            std::env::var_os("REQUIRE_FASHION_MNIST").is_none(),
            "REQUIRE_FASHION_MNIST is set but {DEFAULT_DIR} has no Fashion-MNIST: apt-get install dataset-fashion-mnist"
        );
        eprintln!("skipping: Fashion-MNIST is not installed in {DEFAULT_DIR}");
        return;
    }
    let data = FashionMnist::load(dir, Split::Test, None).unwrap();
    assert_eq!(data.len(), 10_000);
    assert_eq!(
        data.shape(),
        ImageShape {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    let mut counts = [0usize; 10];
    for i in 0..data.len() {
        let img = data.get(i);
        assert_eq!(img.pixels.len(), 28 * 28);
        counts[img.label.unwrap() as usize] += 1;
    }
    assert_eq!(counts, [1000; 10], "the test split is balanced");
}
