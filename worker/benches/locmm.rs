//! Forward and backward time of the per-location product `x[p] @ w[p]`
//! (the custom op in `model/locmm.rs`) against candle's batched matmul and
//! against one shared-weight matmul `[P*B, in] @ [in, out]` of the same
//! FLOPs, at the sizes of the per-location MLPs: the products alone, and a
//! whole autograd pass, which adds candle's bookkeeping (the weight
//! gradient of a per-location layer is P times that of a shared one).
//!
//! `cargo bench -p glom-worker --bench locmm`

#[allow(dead_code, unused_imports)]
#[path = "../src/model/cpu.rs"]
mod cpu;
#[allow(dead_code, unused_imports)]
#[path = "../src/model/gelu.rs"]
mod gelu;
#[allow(dead_code, unused_imports)]
#[path = "../src/model/grads.rs"]
mod grads;
#[allow(dead_code, unused_imports)]
#[path = "../src/model/locmm.rs"]
mod locmm;
#[cfg(test)]
#[allow(dead_code, unused_imports)]
#[path = "../src/model/testutil.rs"]
mod testutil;

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor, Var};

/// Forward plus backward of `sum(f(x, w) * r)`.
fn step(
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
    x: &Var,
    w: &Var,
    r: &Tensor,
) -> Result<()> {
    let y = f(x.as_tensor(), w.as_tensor())?;
    let grads = (y * r)?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("dx");
    let dw = grads.get(w.as_tensor()).expect("dw");
    std::hint::black_box((dx, dw));
    Ok(())
}

/// One timed case.
type Case<'a> = &'a dyn Fn() -> Result<()>;

/// Median milliseconds per call of each case. Back to back: `iters` calls
/// in a row per round, the cases interleaved round by round so that a busy
/// machine hits all alike. With gaps: every call timed alone after a pause
/// long enough for idle pool threads to park; the custom op (like candle's
/// own element-wise ops) then waits for candle's pool worker to wake, which
/// inside a training step, where parallel ops follow each other closely,
/// rarely happens.
fn time(cases: &[Case], gaps: bool) -> Result<Vec<f64>> {
    let (rounds, iters) = if gaps { (150, 1) } else { (15, 20) };
    let mut ms = vec![Vec::with_capacity(rounds); cases.len()];
    for case in cases {
        for _ in 0..5 {
            case()?;
        }
    }
    for _ in 0..rounds {
        for (case, ms) in cases.iter().zip(&mut ms) {
            if gaps {
                std::thread::sleep(Duration::from_millis(2));
            }
            let t0 = Instant::now();
            for _ in 0..iters {
                case()?;
            }
            ms.push(t0.elapsed().as_secs_f64() * 1e3 / iters as f64);
        }
    }
    Ok(ms
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect())
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let (p, b) = (64, 16);
    println!(
        "y[p] = x[p] @ w[p], P={p} B={b}, f32, {} threads, ms per call (median)",
        candle_core::utils::get_num_threads()
    );
    println!("custom: this op; batched: candle's x.matmul(w); shared: [P*B, in] @ [in, out]");
    println!("forward: y; products: y, dx and dw; autograd: y, then backward() of sum(y * r)");
    println!(
        "{:>8} {:>16} {:>9} {:>9} {:>9} {:>13} {:>12}",
        "in x out", "", "custom", "batched", "shared", "batched/cust", "cust/shared"
    );
    for (input, out) in [(32, 64), (64, 32), (64, 64)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (p, b, input), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (p, input, out), &dev)?)?;
        let ws = Var::from_tensor(&Tensor::randn(0f32, 1., (input, out), &dev)?)?;
        let r = Tensor::randn(0f32, 1., (p, b, out), &dev)?;
        let (xt, wt, wst) = (x.as_tensor(), w.as_tensor(), ws.as_tensor());
        let flat = |t: &Tensor, cols| t.reshape((p * b, cols));
        let shared_mm = |x: &Tensor, w: &Tensor| flat(x, input)?.matmul(w)?.reshape((p, b, out));
        // The products of each case; the backward ones as candle's autograd
        // forms them for matmul.
        let fwd_custom = || locmm::loc_matmul(xt, wt);
        let fwd_batched = || xt.matmul(wt);
        let fwd_shared = || shared_mm(xt, wst);
        let all_custom = || {
            let y = locmm::loc_matmul(xt, wt)?;
            Ok((y, locmm::loc_matmul_grads(xt, wt, &r)?))
        };
        let all_batched = || Ok((xt.matmul(wt)?, (r.matmul(&wt.t()?)?, xt.t()?.matmul(&r)?)));
        let all_shared = || {
            let y = shared_mm(xt, wst)?;
            let dx = flat(&r, out)?.matmul(&wst.t()?)?;
            Ok((y, (dx, flat(xt, input)?.t()?.matmul(&flat(&r, out)?)?)))
        };
        let rows: [(&str, bool, [Case; 3]); 4] = [
            (
                "forward",
                false,
                [&|| keep(fwd_custom()), &|| keep(fwd_batched()), &|| {
                    keep(fwd_shared())
                }],
            ),
            (
                "products",
                false,
                [&|| keep(all_custom()), &|| keep(all_batched()), &|| {
                    keep(all_shared())
                }],
            ),
            (
                "products, gaps",
                true,
                [&|| keep(all_custom()), &|| keep(all_batched()), &|| {
                    keep(all_shared())
                }],
            ),
            (
                "autograd",
                false,
                [
                    &|| step(&|x, w| locmm::loc_matmul(x, w), &x, &w, &r),
                    &|| step(&|x, w| x.matmul(w), &x, &w, &r),
                    &|| step(&shared_mm, &x, &ws, &r),
                ],
            ),
        ];
        for (what, gaps, cases) in rows {
            let ms = time(&cases, gaps)?;
            let (custom, batched, shared) = (ms[0], ms[1], ms[2]);
            println!(
                "{:>8} {what:>16} {custom:>9.4} {batched:>9.4} {shared:>9.4} {:>13.2} {:>12.2}",
                format!("{input}x{out}"),
                batched / custom,
                custom / shared,
            );
        }
    }
    Ok(())
}

/// Keeps a result from being optimised away.
fn keep<T>(r: Result<T>) -> Result<()> {
    std::hint::black_box(r?);
    Ok(())
}
