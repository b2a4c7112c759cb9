//! What every command builds from a configuration: the training and
//! held-out datasets, a whole-grid model, run directories and progress bars.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device};
use glom_protocol::config::{Config, DataSource};
use glom_worker::data::{
    Dataset, FashionMnist, MovingScenes, MovingSprites, SceneParams, Sprites, SyntheticScenes,
    Tetrominoes,
};
use glom_worker::model::grid::{Grid, Tile};
use glom_worker::model::Glom;
use indicatif::{ProgressBar, ProgressStyle};

/// The training split and the held-out split.
pub(crate) struct Datasets {
    pub(crate) train: Arc<dyn Dataset>,
    pub(crate) held_out: Arc<dyn Dataset>,
}

/// Open the configured data (synthetic scenes are generated on demand).
pub(crate) fn datasets(cfg: &Config) -> Result<Datasets> {
    let d = &cfg.data;
    let held = cfg.eval.images.max(cfg.eval.probe_images);
    let params = |n| SceneParams {
        size: d.image_size,
        min_objects: d.min_objects,
        max_objects: d.max_objects,
        num_images: n,
        ..SceneParams::default()
    };
    // The generator cannot draw a recognisable part below 8 pixels; the
    // model itself has no such limit (its tests use 2x2 images), so this
    // is the data's check, not the config's.
    if matches!(d.source, DataSource::Scenes | DataSource::MovingScenes) && d.image_size < 8 {
        anyhow::bail!(
            "data.image_size = {}: synthetic scenes need at least 8 pixels",
            d.image_size
        );
    }
    Ok(match d.source {
        DataSource::Scenes => Datasets {
            train: Arc::new(SyntheticScenes::new(params(d.train_images), d.train_seed)),
            held_out: Arc::new(SyntheticScenes::new(params(held), d.eval_seed)),
        },
        DataSource::MovingScenes => Datasets {
            train: Arc::new(MovingScenes::new(
                params(d.train_images),
                d.frames,
                d.train_seed,
            )),
            held_out: Arc::new(MovingScenes::new(params(held), d.frames, d.eval_seed)),
        },
        DataSource::Tetrominoes => Datasets {
            train: Arc::new(Tetrominoes::new(
                cfg.model.patch,
                d.train_images,
                d.train_seed,
            )),
            held_out: Arc::new(Tetrominoes::new(cfg.model.patch, held, d.eval_seed)),
        },
        DataSource::Sprites => Datasets {
            train: Arc::new(Sprites::new(d.image_size, d.train_images, d.train_seed)),
            held_out: Arc::new(Sprites::new(d.image_size, held, d.eval_seed)),
        },
        DataSource::MovingSprites => Datasets {
            train: Arc::new(MovingSprites::new(
                d.image_size,
                d.train_images,
                d.frames,
                d.train_seed,
            )),
            held_out: Arc::new(MovingSprites::new(
                d.image_size,
                held,
                d.frames,
                d.eval_seed,
            )),
        },
        DataSource::FashionMnist => {
            use glom_worker::data::idx::Split;
            let dir = Path::new(&d.path);
            let limit = (d.train_limit > 0).then_some(d.train_limit);
            Datasets {
                train: Arc::new(FashionMnist::load(dir, Split::Train, limit)?),
                held_out: Arc::new(FashionMnist::load(dir, Split::Test, None)?),
            }
        }
    })
}

/// The device `train.device` names (the CPU unless built with `cuda`).
pub(crate) fn device(cfg: &Config) -> Result<Device> {
    Ok(glom_worker::device::device(cfg)?)
}

/// A freshly initialised model of the whole grid, on `train.device` in f32.
pub(crate) fn whole_model(cfg: &Config) -> Result<Glom> {
    let tile = Tile::whole(Grid::square(cfg.grid_side()));
    Ok(Glom::new(cfg, tile, &device(cfg)?, DType::F32)?)
}

/// `runs/<UTC timestamp>`, e.g. `runs/20261126-071500`.
pub(crate) fn default_run_dir() -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    PathBuf::from("runs").join(format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    ))
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Create a fresh run directory; refuse one that already holds a run, so
/// nothing is overwritten.
pub(crate) fn create_run_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let used = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some();
        if used {
            return Err(anyhow!(
                "run directory {} already exists and is not empty; choose another --out",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating run directory {}", dir.display()))
}

/// A progress bar on stderr (hidden when stderr is not a terminal, so logs stay clean).
pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>6} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_smaller_than_8_pixels_are_an_error_not_a_panic() {
        for source in [DataSource::Scenes, DataSource::MovingScenes] {
            let mut cfg = Config::default();
            cfg.data.source = source;
            cfg.data.image_size = 4;
            let e = datasets(&cfg).err().expect("refused");
            assert!(e.to_string().contains("data.image_size = 4"), "{e}");
            cfg.data.image_size = 8;
            assert!(datasets(&cfg).is_ok());
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
