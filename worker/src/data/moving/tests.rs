//! Tests of the moving scenes: frame 0 is the still scene, determinism,
//! consistent maps and labels in every frame, and motion of plausible size.

use super::*;
use std::collections::BTreeSet;

fn params(num_images: usize) -> SceneParams {
    SceneParams {
        num_images,
        ..SceneParams::default()
    }
}

#[test]
fn frame_zero_is_the_still_scene_of_the_same_seed_and_index() {
    let still = SyntheticScenes::new(params(100), 4);
    let moving = MovingScenes::new(params(100), 6, 4);
    for i in [0, 1, 17, 99] {
        let seq = moving.sequence(i);
        assert_eq!(seq.len(), 6);
        assert_eq!(seq[0], still.get(i), "sequence {i}");
    }
    // One frame: the still scenes themselves.
    let one = MovingScenes::new(params(100), 1, 4);
    assert_eq!(one.sequence(5), vec![still.get(5)]);
    assert_eq!(one.get(5), still.get(5));
}

#[test]
fn sequences_are_deterministic_and_independent() {
    let (a, b) = (
        MovingScenes::new(params(50), 4, 9),
        MovingScenes::new(params(50), 4, 9),
    );
    // Asked in another order, or one frame at a time: the same frames.
    let later = b.sequence(7);
    assert_eq!(a.sequence(7), later);
    assert_eq!(a.get(7), later[3], "get is the last frame");
    assert_eq!(
        a.render(7, [2, 1]),
        vec![later[2].clone(), later[1].clone()]
    );
    assert_eq!(a.sequence(57), a.sequence(7), "index wraps modulo len");
    assert_ne!(a.sequence(8)[0].pixels, later[0].pixels);
    assert_eq!(a.frames(), 4);
    assert_eq!(a.shape(), SyntheticScenes::new(params(50), 9).shape());
}

#[test]
fn every_frame_has_consistent_maps_and_the_sequence_label() {
    let data = MovingScenes::new(params(40), 8, 3);
    let mut changed = 0;
    for i in 0..40 {
        let seq = data.sequence(i);
        let label = seq[0].label;
        for (f, img) in seq.iter().enumerate() {
            assert_eq!(img.label, label, "sequence {i} frame {f}");
            assert!(img.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
            let (parts, objects) = (
                img.part_map.as_ref().unwrap(),
                img.object_map.as_ref().unwrap(),
            );
            for (&p, &o) in parts.iter().zip(objects) {
                assert_eq!(p == 0, o == 0);
                if o > 0 {
                    let first = 1 + (o as usize - 1) * scenes::MAX_PARTS;
                    assert!((first..first + scenes::MAX_PARTS).contains(&(p as usize)));
                }
            }
        }
        let ids = |f: usize| -> BTreeSet<u16> {
            seq[f]
                .object_map
                .iter()
                .flatten()
                .copied()
                .filter(|&o| o > 0)
                .collect()
        };
        // Objects keep the ids of the still scene in every frame.
        assert!(ids(7)
            .iter()
            .all(|&o| o as usize <= data.scenes.params().max_objects));
        if seq[0].object_map != seq[7].object_map {
            changed += 1;
        }
    }
    assert_eq!(changed, 40, "every sequence moves");
}

/// One object per scene: where it stays whole inside the image, the centre
/// of its pixels moves by 0.5 to 2 pixels per frame, and its area stays
/// nearly the same (it is rigid; only the pixel grid and the spin change
/// which pixel centres it covers).
#[test]
fn lone_objects_move_rigidly_at_the_drawn_speed() {
    let data = MovingScenes::new(
        SceneParams {
            min_objects: 1,
            max_objects: 1,
            ..params(200)
        },
        5,
        21,
    );
    let n = 32;
    let mut checked = 0;
    for i in 0..200 {
        let seq = data.sequence(i);
        let stats: Vec<(f64, f64, f64, bool)> = seq
            .iter()
            .map(|img| {
                let map = img.object_map.as_ref().unwrap();
                let (mut count, mut sx, mut sy, mut edge) = (0.0, 0.0, 0.0, false);
                for (at, &o) in map.iter().enumerate() {
                    if o == 1 {
                        let (x, y) = (at % n, at / n);
                        count += 1.0;
                        sx += x as f64;
                        sy += y as f64;
                        edge |= x == 0 || y == 0 || x == n - 1 || y == n - 1;
                    }
                }
                (count, sx / count, sy / count, edge)
            })
            .collect();
        if stats.iter().any(|s| s.3 || s.0 < 30.0) {
            continue; // touches the border or too small to measure
        }
        checked += 1;
        for w in stats.windows(2) {
            let (a, b) = (w[0], w[1]);
            let step = ((b.1 - a.1).powi(2) + (b.2 - a.2).powi(2)).sqrt();
            assert!((0.2..=2.6).contains(&step), "sequence {i}: moved {step}");
            assert!(
                (b.0 - a.0).abs() <= 0.2 * a.0,
                "sequence {i}: area {} -> {}",
                a.0,
                b.0
            );
        }
    }
    assert!(checked >= 20, "only {checked} sequences stayed inside");
}

/// The rotated drawing path agrees with the unrotated one at a negligible
/// angle (pixel for pixel, in both maps).
#[test]
fn the_rotated_path_agrees_with_the_plain_one() {
    let scenes = SyntheticScenes::new(params(20), 8);
    for i in 0..20 {
        let (layout, _) = scenes.layout(i);
        let count = layout.objects.len();
        let plain = layout.render(&vec![Pose::REST; count]);
        let tiny = Pose {
            angle: 1e-6,
            ..Pose::REST
        };
        let turned = layout.render(&vec![tiny; count]);
        assert_eq!(plain.object_map, turned.object_map, "scene {i}");
        assert_eq!(plain.part_map, turned.part_map, "scene {i}");
    }
}
