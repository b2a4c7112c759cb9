//! `glom bench`'s report as the text it prints.

use glom_protocol::config::Attention;

use super::{parts, Report};

/// The report as a table.
pub(crate) fn table(r: &Report) -> String {
    let s = &r.shape;
    let attention = match s.attention {
        Attention::Sampled => format!("attention over {} sampled neighbours", s.neighbours),
        Attention::All => format!("attention over all {} other locations", s.neighbours),
    };
    let mut out = format!(
        "glom bench{preset}: {0}x{1}x{1} images, {2}x{2} locations, d {3}, hidden {4}, {5} levels, \
         {6} iterations, batch {7}, {attention}; {8} threads, median of {9} timed calls (config {10})\n",
        s.channels,
        s.image_side,
        s.grid_side,
        s.dim,
        s.hidden,
        s.levels,
        s.iterations,
        s.batch_size,
        r.threads,
        r.repeats,
        &r.config_hash[..12.min(r.config_hash.len())],
        preset = r.preset.map_or(String::new(), |p| format!(" --preset {p}")),
    );
    if r.preset == Some("peer") {
        out.push_str(
            "(images: the built-in scenes drawn at 28x28, 3 channels; reconstruction of masked \
             patches stands in for the port's noised input, at the same cost)\n",
        );
    }
    out.push('\n');
    let width = r
        .rows
        .iter()
        .map(|row| row.name.len())
        .max()
        .unwrap_or(3)
        .max(40);
    out.push_str(&format!(
        "{:<width$} {:>10} {:>10} {:>9} {:>8} {:>8}\n",
        "row", "ms", "images/s", "GFLOP/s", "% GEMM", "GEMM ms"
    ));
    for row in &r.rows {
        let images = row
            .images_per_s
            .map_or("-".to_string(), |v| format!("{v:.1}"));
        out.push_str(&format!(
            "{:<width$} {:>10.2} {:>10} {:>9.2} {:>8.1} {:>8.2}\n",
            row.name,
            row.seconds * 1e3,
            images,
            row.gflop_per_s,
            row.percent_of_gemm,
            row.gemm_seconds * 1e3,
        ));
    }
    let against = match r.preset {
        Some("peer") => "the peer's shared BPTT step",
        _ => "the shared local step",
    };
    out.push_str(&format!(
        "\nper-location / shared, one MLP at equal FLOPs: {:.2}x the time\n\
         per-location local step / {against}: {:.2}x the time per FLOP, {:.2}x the time\n",
        r.per_location_over_shared_mlp,
        r.per_location_over_shared_step,
        r.per_location_over_shared_step_time,
    ));
    out.push_str(&parts::table(&r.breakdown));
    match (&r.halo, &r.halo_skipped) {
        (Some(h), _) => out.push_str(&format!(
            "\nhalo wait, step 1 on {} in-process workers (glom train, loopback QUIC; {} steps, \
             the first and last left out): {:.1}% of the slowest worker's step \
             ({:.2} ms a step, {:.0} halo bytes a step)\n",
            h.workers,
            h.steps + 2,
            100.0 * h.wait_fraction,
            1e3 * h.seconds_per_step,
            h.bytes_per_step,
        )),
        (None, Some(why)) => out.push_str(&format!("\nhalo wait: not measured ({why})\n")),
        (None, None) => {}
    }
    out
}
