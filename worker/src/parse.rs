//! The parse tree of one image, read off its settled embedding field.
//!
//! In GLOM (Hinton 2021, "How to represent part-whole hierarchies in a
//! neural network", sections 1 and 7) the parse tree is not a data structure
//! the network builds: it is implicit in the islands of (nearly) identical
//! vectors at each level. A node is an island at one level; its parent is the
//! island at the next level up that the node's locations belong to. Islands
//! here are the threshold islands of [`crate::eval::threshold_islands`]
//! (cosine agglomeration of the vectors as they are), the same ones
//! evaluation scores, and a
//! node's parent is the island one level up that covers most of its locations
//! (so a part whose locations straddle two wholes still gets one parent).
//!
//! Pure computation: vectors in, nodes out.

use serde::Serialize;

use crate::eval::threshold_islands;

/// One island: a node of the parse tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Index of this node in [`ParseTree::nodes`].
    pub id: usize,
    /// Level of the embedding field the island lives at (0 = lowest).
    pub level: usize,
    /// The island's label at its level, as [`threshold_islands`] numbers
    /// them (`0..m` in order of first appearance in raster order).
    pub island: usize,
    /// Grid locations (row-major) of the island, ascending.
    pub locations: Vec<usize>,
    /// Number of locations.
    pub size: usize,
    /// Mean L2 norm of the member vectors.
    pub mean_norm: f64,
    /// Id of the island one level up covering most of these locations (ties:
    /// the lowest id); `None` at the top level.
    pub parent: Option<usize>,
}

/// The islands of every level of one image, linked to their parents.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParseTree {
    /// Nodes level by level (lowest first), within a level by island label.
    pub nodes: Vec<Node>,
}

impl ParseTree {
    /// The nodes of one level.
    pub fn level(&self, level: usize) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.level == level)
    }
}

/// Island labels per location, for every level: `levels[l]` holds one row
/// of `dim` values per location (row-major, one image).
///
/// # Panics
/// When a level's length is not a multiple of `dim`.
pub fn islands_per_level(levels: &[Vec<f32>], dim: usize, threshold: f64) -> Vec<Vec<usize>> {
    levels
        .iter()
        .map(|v| {
            assert!(
                dim > 0 && v.len() % dim == 0,
                "islands_per_level: {} values are not rows of {dim}",
                v.len()
            );
            threshold_islands(v, dim, threshold)
        })
        .collect()
}

/// The parse tree of one image from its embedding field: `levels[l]` holds
/// one row of `dim` values per location at level `l`.
///
/// # Panics
/// When the levels do not all have the same number of locations.
pub fn build_tree(levels: &[Vec<f32>], dim: usize, threshold: f64) -> ParseTree {
    let labels = islands_per_level(levels, dim, threshold);
    if let Some(first) = labels.first() {
        assert!(
            labels.iter().all(|l| l.len() == first.len()),
            "build_tree: levels with different numbers of locations"
        );
    }
    let mut nodes = Vec::new();
    // Id of the first node of each level: a level's island k is node first[l] + k.
    let mut first = Vec::with_capacity(labels.len());
    for (level, (field, lab)) in levels.iter().zip(&labels).enumerate() {
        first.push(nodes.len());
        let count = lab.iter().max().map_or(0, |&m| m + 1);
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (loc, &k) in lab.iter().enumerate() {
            members[k].push(loc);
        }
        for (island, locations) in members.into_iter().enumerate() {
            let norm_sum: f64 = locations
                .iter()
                .map(|&i| {
                    field[i * dim..(i + 1) * dim]
                        .iter()
                        .map(|&x| f64::from(x) * f64::from(x))
                        .sum::<f64>()
                        .sqrt()
                })
                .sum();
            let size = locations.len();
            nodes.push(Node {
                id: nodes.len(),
                level,
                island,
                mean_norm: norm_sum / size.max(1) as f64,
                size,
                locations,
                parent: None,
            });
        }
    }
    for node in &mut nodes {
        let Some(up) = labels.get(node.level + 1) else {
            continue;
        };
        let count = up.iter().max().map_or(0, |&m| m + 1);
        let mut cover = vec![0usize; count];
        for &loc in &node.locations {
            cover[up[loc]] += 1;
        }
        // Most locations covered; among equals the lowest label (= lowest id).
        let best = cover
            .iter()
            .enumerate()
            .fold(None, |best: Option<(usize, usize)>, (k, &c)| match best {
                Some((_, bc)) if bc >= c => best,
                _ => Some((k, c)),
            });
        node.parent = best.map(|(k, _)| first[node.level + 1] + k);
    }
    ParseTree { nodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDE: usize = 4;

    /// A 4x4 field of `dim`-vectors: location (r, c) gets `at(r, c)`.
    fn field(dim: usize, at: impl Fn(usize, usize) -> Vec<f32>) -> Vec<f32> {
        let mut v = Vec::new();
        for r in 0..SIDE {
            for c in 0..SIDE {
                let x = at(r, c);
                assert_eq!(x.len(), dim);
                v.extend(x);
            }
        }
        v
    }

    fn one_hot(dim: usize, k: usize, scale: f32) -> Vec<f32> {
        let mut x = vec![0.0; dim];
        x[k] = scale;
        x
    }

    /// Level 0: four 2x2 quadrant islands; level 1: left half, right half.
    fn quadrants_and_halves() -> Vec<Vec<f32>> {
        let quadrant = |r: usize, c: usize| 2 * (r / 2) + c / 2;
        let level0 = field(4, |r, c| one_hot(4, quadrant(r, c), 2.0));
        let level1 = field(4, |_, c| {
            let s = if c < 2 { 3.0 } else { -3.0 };
            vec![s, s, 0.0, 0.0]
        });
        vec![level0, level1]
    }

    fn locs(cells: &[(usize, usize)]) -> Vec<usize> {
        let mut v: Vec<usize> = cells.iter().map(|&(r, c)| r * SIDE + c).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn quadrants_have_their_halves_as_parents() {
        let tree = build_tree(&quadrants_and_halves(), 4, 0.3);
        assert_eq!(tree.nodes.len(), 6, "{tree:#?}");
        let top_left = locs(&[(0, 0), (0, 1), (1, 0), (1, 1)]);
        let top_right = locs(&[(0, 2), (0, 3), (1, 2), (1, 3)]);
        let bottom_left = locs(&[(2, 0), (2, 1), (3, 0), (3, 1)]);
        let bottom_right = locs(&[(2, 2), (2, 3), (3, 2), (3, 3)]);
        let left: Vec<usize> = (0..16).filter(|i| i % SIDE < 2).collect();
        let right: Vec<usize> = (0..16).filter(|i| i % SIDE >= 2).collect();
        // Level 0, islands in order of first appearance; level 1 likewise.
        let expected: [(usize, &[usize], Option<usize>); 6] = [
            (0, &top_left, Some(4)),
            (0, &top_right, Some(5)),
            (0, &bottom_left, Some(4)),
            (0, &bottom_right, Some(5)),
            (1, &left, None),
            (1, &right, None),
        ];
        for (id, (node, (level, locations, parent))) in tree.nodes.iter().zip(expected).enumerate()
        {
            assert_eq!(node.id, id);
            assert_eq!(node.level, level, "node {id}");
            assert_eq!(node.locations, locations, "node {id}");
            assert_eq!(node.size, locations.len(), "node {id}");
            assert_eq!(node.parent, parent, "node {id}");
        }
        assert_eq!(
            tree.level(0).map(|n| n.island).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(tree.level(1).map(|n| n.island).collect::<Vec<_>>(), [0, 1]);
        for n in tree.level(0) {
            assert!((n.mean_norm - 2.0).abs() < 1e-6, "{n:?}");
        }
        for n in tree.level(1) {
            assert!((n.mean_norm - 18f64.sqrt()).abs() < 1e-5, "{n:?}");
        }
    }

    #[test]
    fn islands_per_level_label_every_location() {
        let labels = islands_per_level(&quadrants_and_halves(), 4, 0.3);
        assert_eq!(labels[0], [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]);
        assert_eq!(labels[1], [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn parent_is_the_majority_island_with_ties_to_the_lowest_id() {
        // Level 0: one island of the whole grid except location 15, which
        // points elsewhere. Level 1: rows 0-1 vs rows 2-3, location 15 in the
        // bottom half.
        let level0 = field(2, |r, c| {
            if (r, c) == (3, 3) {
                vec![-1.0, 0.0]
            } else {
                vec![1.0, 0.2]
            }
        });
        let level1 = field(2, |r, _| {
            if r < 2 {
                vec![0.0, 1.0]
            } else {
                vec![0.0, -1.0]
            }
        });
        let tree = build_tree(&[level0, level1], 2, 0.3);
        let level0: Vec<&Node> = tree.level(0).collect();
        assert_eq!(level0.len(), 2, "{tree:#?}");
        assert_eq!(level0[0].size, 15);
        // 8 locations above, 7 below: the top half (node 2) covers most.
        assert_eq!(level0[0].parent, Some(2));
        assert_eq!(level0[1].locations, [15]);
        assert_eq!(level0[1].parent, Some(3));

        // An exact tie: a 2-location island split evenly between two parents.
        let a = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let b = vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let tree = build_tree(&[a, b], 2, 0.3);
        let low: Vec<&Node> = tree.level(0).collect();
        assert_eq!(low[0].locations, [0, 1]);
        assert_eq!(low[0].parent, Some(2), "{tree:#?}");
    }

    #[test]
    fn empty_field_gives_an_empty_tree() {
        assert!(build_tree(&[], 4, 0.3).nodes.is_empty());
        assert!(build_tree(&[Vec::new(), Vec::new()], 4, 0.3)
            .nodes
            .is_empty());
    }
}
