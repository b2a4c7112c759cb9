//! Islands over the frames of a video: do they stay with the objects as
//! the objects move (paper section 11)?
//!
//! GLOM's claim for video is that an object's island persists while the
//! object moves: the locations that stay inside it change their object
//! embedding only slightly, so they stay in the same island. Measuring
//! that needs islands matched from frame to frame (their labels are
//! arbitrary per frame) and the truth of which object covers a location in
//! both frames. [`stability`] defines the figure; [`Stability`] adds it up
//! over sequences; [`frame_island_ari`] is the plain island ARI of every
//! frame, for the mean over frames.

use crate::analysis::adjusted_rand_index;

/// Stayed and counted locations over consecutive frames ([`stability`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stability {
    /// Location-steps whose island was carried over.
    pub stayed: usize,
    /// Location-steps covered by the same object in both frames.
    pub covered: usize,
}

impl Stability {
    /// Add another sequence's counts.
    pub fn add(&mut self, other: Stability) {
        self.stayed += other.stayed;
        self.covered += other.covered;
    }

    /// `stayed / covered`; `None` when nothing was covered.
    pub fn rate(&self) -> Option<f64> {
        (self.covered > 0).then(|| self.stayed as f64 / self.covered as f64)
    }
}

/// Match the islands of frame `f` (`after`, one label per location) to
/// those of frame `f - 1` (`before`) one to one: every pair of islands
/// sharing locations, in decreasing order of the locations they share
/// (ties: the smaller `before` label, then the smaller `after` label), is
/// matched when neither island is matched yet. The result maps every
/// `after` label to its `before` label, `None` for an island left over (a
/// new island, or the smaller piece of one that split).
pub fn match_islands(before: &[usize], after: &[usize]) -> Vec<Option<usize>> {
    assert_eq!(before.len(), after.len(), "frames of different sizes");
    let size = |labels: &[usize]| labels.iter().max().map_or(0, |m| m + 1);
    let (nb, na) = (size(before), size(after));
    let mut shared = vec![0usize; nb * na];
    for (&b, &a) in before.iter().zip(after) {
        shared[b * na + a] += 1;
    }
    let mut pairs: Vec<(usize, usize, usize)> = (0..nb)
        .flat_map(|b| (0..na).map(move |a| (b, a)))
        .filter_map(|(b, a)| (shared[b * na + a] > 0).then_some((shared[b * na + a], b, a)))
        .collect();
    pairs.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut to_before = vec![None; na];
    let mut taken = vec![false; nb];
    for (_, b, a) in pairs {
        if to_before[a].is_none() && !taken[b] {
            to_before[a] = Some(b);
            taken[b] = true;
        }
    }
    to_before
}

/// Temporal stability of one sequence's islands at one level.
///
/// `islands[f]` holds the island label of every location in frame `f`
/// (e.g. the threshold islands of that frame's state) and `objects[f]`
/// the object id covering every location then (the majority object of its
/// patch, 0 = background). For every pair of consecutive frames `(f - 1,
/// f)` the islands are matched ([`match_islands`]), and every location
/// covered by the same object in both frames (the same non-zero id) is
/// *covered*; it *stayed* when its island in frame `f` is matched to its
/// island in frame `f - 1`. The stability of a set of sequences is stayed
/// over covered, summed over sequences, frame pairs and locations: 1 when
/// every island carries over while its object moves, lower when islands
/// break up, merge or swap as the frames go.
///
/// A level collapsed to one island per frame is perfectly stable: read
/// the figure beside the island ARI, which such a level fails.
pub fn stability(islands: &[Vec<usize>], objects: &[Vec<u16>]) -> Stability {
    assert_eq!(islands.len(), objects.len(), "one object map per frame");
    let mut out = Stability::default();
    for f in 1..islands.len() {
        let matched = match_islands(&islands[f - 1], &islands[f]);
        let locations = islands[f].len();
        assert!(
            objects[f].len() == locations && objects[f - 1].len() == locations,
            "one object id per location"
        );
        for x in 0..locations {
            let (o0, o1) = (objects[f - 1][x], objects[f][x]);
            if o0 == 0 || o0 != o1 {
                continue;
            }
            out.covered += 1;
            if matched[islands[f][x]] == Some(islands[f - 1][x]) {
                out.stayed += 1;
            }
        }
    }
    out
}

/// The adjusted Rand index of a frame's islands against its object map
/// (background a segment like any other), as the still images' `object`
/// score is computed.
pub fn frame_island_ari(islands: &[usize], objects: &[u16]) -> f64 {
    let truth: Vec<usize> = objects.iter().map(|&o| usize::from(o)).collect();
    adjusted_rand_index(islands, &truth)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six locations in a row, three frames. Object 1 moves right by one
    /// location, object 2 stays; in the last frame object 1's island
    /// breaks: two of its locations join object 2's island.
    ///
    /// - frames 0 -> 1: islands {0: 0,1,2 / 1: 3 / 2: 4,5} become
    ///   {3: 0 / 5: 1,2,3 / 4: 4,5}; shared locations (0,5)=2, (2,4)=2,
    ///   (0,3)=1, (1,5)=1, so 5 <- 0 and 4 <- 2; island 3 is new. Covered:
    ///   locations 1, 2 (object 1) and 4, 5 (object 2); all stay: 4 of 4.
    /// - frames 1 -> 2: islands {7: 0,1 / 8: 2,3,4,5}; shared (4,8)=2,
    ///   (5,8)=2, (3,7)=1, (5,7)=1: 8 <- 4, 7 <- 3, island 5 is lost.
    ///   Covered: 1, 2, 3 (object 1) and 4, 5 (object 2); only 4 and 5
    ///   stay: 2 of 5.
    #[test]
    fn stability_of_a_hand_made_sequence() {
        let islands = vec![
            vec![0, 0, 0, 1, 2, 2],
            vec![3, 5, 5, 5, 4, 4],
            vec![7, 7, 8, 8, 8, 8],
        ];
        let objects = vec![
            vec![1, 1, 1, 0, 2, 2],
            vec![0, 1, 1, 1, 2, 2],
            vec![0, 1, 1, 1, 2, 2],
        ];
        let m = match_islands(&islands[0], &islands[1]);
        assert_eq!(m[3], None);
        assert_eq!((m[4], m[5]), (Some(2), Some(0)));
        let m = match_islands(&islands[1], &islands[2]);
        assert_eq!((m[7], m[8]), (Some(3), Some(4)));
        assert_eq!(
            stability(&islands[..2], &objects[..2]),
            Stability {
                stayed: 4,
                covered: 4
            }
        );
        let s = stability(&islands, &objects);
        assert_eq!(
            s,
            Stability {
                stayed: 6,
                covered: 9
            }
        );
        assert_eq!(s.rate(), Some(6.0 / 9.0));
    }

    #[test]
    fn renamed_islands_and_one_island_are_stable() {
        let objects = vec![vec![1, 1, 2, 2]; 3];
        // The same partition under other names every frame.
        let renamed = vec![vec![0, 0, 1, 1], vec![1, 1, 0, 0], vec![5, 5, 2, 2]];
        assert_eq!(stability(&renamed, &objects).rate(), Some(1.0));
        let collapsed = vec![vec![0; 4]; 3];
        assert_eq!(stability(&collapsed, &objects).rate(), Some(1.0));
        // Nothing covered twice by one object: no figure.
        let flicker = vec![vec![1, 0, 1, 0], vec![0, 1, 0, 1]];
        let s = stability(&renamed[..2], &flicker);
        assert_eq!((s.covered, s.rate()), (0, None));
        // One frame: no pair of frames.
        assert_eq!(stability(&renamed[..1], &objects[..1]).covered, 0);
    }

    #[test]
    fn frame_ari_is_one_for_islands_that_are_the_objects() {
        assert_eq!(frame_island_ari(&[4, 4, 0, 0, 9], &[0, 0, 1, 1, 2]), 1.0);
        assert!(frame_island_ari(&[0, 0, 0, 0, 0], &[0, 0, 1, 1, 2]).abs() < 1e-12);
    }
}
