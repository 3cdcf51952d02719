//! Task labels and their stages: a task's stage is its label without its block or partition
//! number, and what a record of the task keeps of its label is the part before the stage's
//! name, inline.

use arrayvec::ArrayString;

/// The stage a task of this label belongs to: the label without leading `<word> <n> of ` and
/// `<n> of ` parts (`block 3 of stage 1 (map)` → `stage 1 (map)`, `partition 2 of 4 of SQL
/// scan t` → `SQL scan t`).
pub fn stage_of(label: &str) -> &str {
    let mut rest = label;
    loop {
        match numbered_prefix(rest).and_then(|n| rest.get(n..)) {
            Some(next) if !next.is_empty() && next.parse::<u64>().is_err() => rest = next,
            _ => return rest,
        }
    }
}

/// The length of `text`'s leading `<n> of ` or `<word> <n> of `, if it has one (no
/// allocation: this runs for every task).
fn numbered_prefix(text: &str) -> Option<usize> {
    let number_of = |t: &str| -> Option<usize> {
        let (number, after) = t.split_once(' ')?;
        number.parse::<u64>().ok()?;
        after.starts_with("of ").then_some(number.len() + 4)
    };
    number_of(text).or_else(|| {
        let (word, after) = text.split_once(' ')?;
        number_of(after).map(|n| word.len() + 1 + n)
    })
}

/// Bytes of a label kept inline before its stage's name.
const PREFIX_BYTES: usize = 30;

/// The part of a task's label before its stage's name (`block 3 of ` of `block 3 of stage 1
/// (map)`), kept inline: nothing allocated, nothing to free. The event log's records hold one
/// of these rather than the label (the stage's name is kept once, with the stage), because
/// freeing a label allocated long before costs a cache miss per task on the head. A prefix
/// longer than 30 bytes is cut (at a character boundary) and shown with `…`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LabelPrefix {
    text: ArrayString<PREFIX_BYTES>,
    cut: bool,
}

impl LabelPrefix {
    /// What of `label` comes before `stage` (a suffix of it, [`stage_of`] the label; with
    /// an empty `stage`, the whole label).
    pub fn of(label: &str, stage: &str) -> Self {
        let prefix = label.strip_suffix(stage).unwrap_or(label);
        let mut end = prefix.len().min(PREFIX_BYTES);
        while !prefix.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            text: ArrayString::from(&prefix[..end]).unwrap_or_default(),
            cut: end < prefix.len(),
        }
    }

    /// The label again, with `stage` after the prefix.
    pub fn label(&self, stage: &str) -> String {
        let cut = if self.cut { "…" } else { "" };
        format!("{}{cut}{stage}", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_labels_without_their_numbers() {
        assert_eq!(stage_of("block 3 of stage 1 (map)"), "stage 1 (map)");
        assert_eq!(
            stage_of("partition 2 of 4 of SQL scan lineitem"),
            "SQL scan lineitem"
        );
        assert_eq!(stage_of("add"), "add");
        assert_eq!(stage_of("block 3 of"), "block 3 of");
        assert_eq!(stage_of("3 of 4"), "3 of 4");
        assert_eq!(stage_of(""), "");
        assert_eq!(stage_of("row 7 of 9 of stage 2 (x)"), "stage 2 (x)");
        assert_eq!(stage_of("block x of stage"), "block x of stage");
        assert_eq!(
            stage_of("lineitem reduce (all 4 partitions, 10 bytes)"),
            "lineitem reduce (all 4 partitions, 10 bytes)"
        );
    }

    proptest::proptest! {
        /// A label comes back whole from its prefix and its stage whenever the prefix fits,
        /// and cut with `…` (never split inside a character) when it does not.
        #[test]
        fn a_label_comes_back_from_its_prefix_and_stage(label in "\\PC{0,60}") {
            let stage = stage_of(&label);
            let back = LabelPrefix::of(&label, stage).label(stage);
            let prefix_len = label.len() - stage.len();
            if prefix_len <= PREFIX_BYTES {
                proptest::prop_assert_eq!(&back, &label);
            } else {
                proptest::prop_assert!(back.contains('…') && back.ends_with(stage));
            }
            let whole = LabelPrefix::of(&label, "").label("");
            proptest::prop_assert!(label.starts_with(whole.trim_end_matches('…')));
        }
    }

    #[test]
    fn numbered_labels_come_back_whole() {
        for label in [
            "block 3 of stage 1 (map)",
            "partition 12 of 64 of SQL scan t",
            "add",
        ] {
            let stage = stage_of(label);
            assert_eq!(LabelPrefix::of(label, stage).label(stage), label);
        }
    }
}
