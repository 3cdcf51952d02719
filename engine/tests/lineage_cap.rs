//! The lineage memory cap (a process of its own, since the cap and its count are process-wide):
//! past the cap no lineage is kept, and dropping lineage gives its bytes back.

use manta_engine::lineage::{Lineage, lineage_bytes, set_max_lineage_bytes};
use manta_engine::{Resources, TaskSpec};

fn spec(arg_bytes: usize) -> TaskSpec {
    TaskSpec {
        function: "f".into(),
        args: vec![7u8; arg_bytes].into(),
        inputs: Vec::new(),
        input_batches: None,
        batched_inputs: None,
        resources: Resources::default(),
        max_retries: 0,
        label: "f".into(),
    }
}

#[test]
fn lineage_past_the_cap_is_not_kept_and_dropped_lineage_frees_room() {
    set_max_lineage_bytes(10_000);
    let before = lineage_bytes();
    let kept: Vec<_> = (0..20).map_while(|_| Lineage::of(&spec(1_000))).collect();
    assert!(
        (5..10).contains(&kept.len()),
        "about 10,000 bytes of 1,000-byte tasks: {} kept",
        kept.len()
    );
    assert!(lineage_bytes() <= 10_000);
    assert!(Lineage::of(&spec(1_000)).is_none(), "the cap is reached");
    assert!(
        Lineage::of(&spec(20_000)).is_none(),
        "one task larger than the cap"
    );
    drop(kept);
    assert_eq!(lineage_bytes(), before);
    assert!(Lineage::of(&spec(1_000)).is_some(), "room again");
    set_max_lineage_bytes(0);
    assert!(Lineage::of(&spec(0)).is_none(), "a cap of 0 keeps none");
}
