//! A batch's rows listed group by group, so that sums over few groups add in registers.
//!
//! Adding each row's value into its group's slot in memory makes every addition wait for the
//! last one into the same slot; with few groups (TPC-H q1 has four) that is most rows.
//! [`super::laned_sums`] spreads the wait over four copies of each slot; this goes further for
//! a batch with few groups: its rows are sorted by group once (a counting sort of the group
//! indices), and every summing accumulator then adds each group's rows into a register, one
//! group after another, and stores one sum per group. Sorting once pays off when several
//! aggregates read the same batch: q1 has eight.
//!
//! The sort itself makes the same kind of chain (each row bumps its group's position), so the
//! batch is cut into [`WAYS`] consecutive parts, each with its own counts and positions, and the
//! parts are stepped through side by side: their chains do not wait on each other. A group's
//! rows stay in the order of the batch (the parts' shares of a group follow each other), so
//! the values they read lie in order in memory.

/// How many parts of a batch are counted and placed side by side.
const WAYS: usize = 4;

/// The rows of one batch, ordered by group.
#[derive(Default)]
pub struct RowsByGroup {
    /// Where each group's rows start in `rows`, and where the last one's end.
    starts: Vec<u32>,
    /// The rows' indices, group by group, each group's in the batch's order.
    rows: Vec<u32>,
    /// By part and group (`part * groups + group`): counts, then next positions.
    positions: Vec<u32>,
}

impl RowsByGroup {
    /// Whether sorting a batch of `rows` rows over `groups` groups costs less than it saves:
    /// the groups must be few beside the rows, or clearing their counts would cost more.
    pub fn worth_it(groups: usize, rows: usize) -> bool {
        rows >= 64 && groups * 8 <= rows && u32::try_from(rows).is_ok()
    }

    /// Orders the rows whose groups are `groups` (each below `total`).
    pub fn sort(&mut self, groups: &[usize], total: usize) {
        let rows = groups.len();
        let part = rows / WAYS;
        // The rows after the parts' whole share belong to the last part, which they follow.
        let tail = WAYS * part..rows;
        let positions = &mut self.positions;
        positions.clear();
        positions.resize(WAYS * total, 0);
        for i in 0..part {
            for way in 0..WAYS {
                positions[way * total + groups[way * part + i]] += 1;
            }
        }
        for row in tail.clone() {
            positions[(WAYS - 1) * total + groups[row]] += 1;
        }
        self.starts.clear();
        let mut next = 0u32;
        for group in 0..total {
            self.starts.push(next);
            for way in 0..WAYS {
                let slot = &mut positions[way * total + group];
                (*slot, next) = (next, next + *slot);
            }
        }
        self.starts.push(next);
        self.rows.clear();
        self.rows.resize(rows, 0);
        let mut place = |way: usize, row: usize| {
            let position = &mut positions[way * total + groups[row]];
            self.rows[*position as usize] = row as u32;
            *position += 1;
        };
        for i in 0..part {
            for way in 0..WAYS {
                place(way, way * part + i);
            }
        }
        for row in tail {
            place(WAYS - 1, row);
        }
    }

    /// Each group that has rows, with its rows.
    pub fn groups(&self) -> impl Iterator<Item = (usize, &[u32])> {
        self.starts
            .windows(2)
            .enumerate()
            .filter(|(_, bounds)| bounds[0] < bounds[1])
            .map(|(group, bounds)| (group, &self.rows[bounds[0] as usize..bounds[1] as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every row is listed once, under its own group, and each group's rows in the batch's
        /// order: batches of any length (parts of one row, or a tail), any groups.
        #[test]
        fn every_row_is_listed_once_under_its_group_in_order(
            (total, groups) in (1usize..40).prop_flat_map(|total| {
                (Just(total), proptest::collection::vec(0..total, 0..300))
            })
        ) {
            let mut sorted = RowsByGroup::default();
            sorted.sort(&groups, total);
            let mut seen = vec![false; groups.len()];
            let mut listed = Vec::new();
            for (group, rows) in sorted.groups() {
                listed.push(group);
                prop_assert!(rows.windows(2).all(|w| w[0] < w[1]), "group {group}: {rows:?}");
                for &row in rows {
                    prop_assert_eq!(groups[row as usize], group);
                    prop_assert!(!std::mem::replace(&mut seen[row as usize], true));
                }
            }
            prop_assert!(seen.iter().all(|&s| s));
            let mut present: Vec<usize> = groups.clone();
            present.sort_unstable();
            present.dedup();
            prop_assert_eq!(listed, present);
        }
    }
}
