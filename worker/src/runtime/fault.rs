//! Fault injection, for testing recovery (DESIGN.md section 7) the way it
//! happens in production: `GLOM_FAIL_AT_STEP=NAME:STEP[:MODE]` makes the
//! worker named `NAME` fail when it is asked for step `STEP` (0-based),
//! once per process, so that the step trained again after the rollback
//! goes through. `MODE` is `error` (default: the step returns an error,
//! which the worker reports before it joins again) or `panic` (the compute
//! thread panics: the worker is gone, as after a crash).
//!
//! Unset, or naming another worker, it does nothing. A malformed value is
//! an error at the first step, naming the variable and the value.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// The environment variable read by [`check`].
pub const VAR: &str = "GLOM_FAIL_AT_STEP";

/// Whether the fault of this process has fired.
static FIRED: AtomicBool = AtomicBool::new(false);

/// What the variable asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub worker: String,
    pub step: u64,
    pub panic: bool,
}

/// Parse `NAME:STEP[:MODE]`.
pub fn parse(value: &str) -> Result<Fault> {
    let bad = |why: &str| {
        Error::Runtime(format!(
            "{VAR}={value:?}: {why} (expected NAME:STEP or NAME:STEP:error|panic)"
        ))
    };
    let mut parts = value.split(':');
    let (Some(worker), Some(step)) = (parts.next(), parts.next()) else {
        return Err(bad("no step"));
    };
    let step = step
        .parse()
        .map_err(|_| bad("the step is not a whole number"))?;
    let panic = match parts.next() {
        None | Some("error") => false,
        Some("panic") => true,
        Some(_) => return Err(bad("unknown mode")),
    };
    if worker.is_empty() || parts.next().is_some() {
        return Err(bad("malformed"));
    }
    Ok(Fault {
        worker: worker.to_string(),
        step,
        panic,
    })
}

/// Check [`VAR`] if it is set: a malformed value is an error naming it.
pub fn validate() -> Result<()> {
    match std::env::var(VAR) {
        Ok(value) => parse(&value).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Fail here if [`VAR`] names this worker and `step`, the first time only.
pub fn check(worker: &str, step: u64) -> Result<()> {
    let Ok(value) = std::env::var(VAR) else {
        return Ok(());
    };
    let fault = parse(&value)?;
    if fault.worker != worker || fault.step != step || FIRED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let what = format!("{VAR}: injected failure of {worker} at step {step}");
    if fault.panic {
        panic!("{what}");
    }
    Err(Error::Runtime(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_name_what_is_wrong() {
        assert_eq!(
            parse("worker-1:7").unwrap(),
            Fault {
                worker: "worker-1".into(),
                step: 7,
                panic: false
            }
        );
        assert!(parse("w:3:panic").unwrap().panic);
        for bad in ["w", "w:x", "w:3:boom", ":3", "w:3:error:x"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(VAR) && e.contains(bad), "{e}");
        }
    }
}
