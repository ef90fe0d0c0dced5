//! `FieldSet::from_bitmaps` and `FieldSet::from_names` on arbitrary field lists.
//!
//! The input, read as UTF-8 (lossy), is split on commas and newlines into the entries of one
//! header array. The layout is the User writer schema of the Salesforce simulator, so `Name`
//! and `Address` are compound fields. Neither function may panic; where one succeeds the
//! result must hold the invariants checked below.

#![no_main]

use std::collections::HashSet;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use usersync::salesforce::avro::ChangeEventSchema;
use usersync::salesforce::bitmap::{FieldLayout, FieldSet};
use usersync_fuzz::writer_schema;

static LAYOUT: LazyLock<FieldLayout> = LazyLock::new(|| {
    let version = writer_schema();
    let schema = ChangeEventSchema::parse(&version.id, &version.json)
        .expect("the simulator's User schema parses");
    let layout = schema.layout().clone();
    for compound in ["Name", "Address"] {
        let position = layout
            .top_level
            .iter()
            .position(|n| n == compound)
            .unwrap_or_else(|| panic!("{compound} is a top-level field"));
        assert!(
            layout.nested.contains_key(&position),
            "{compound} is compound"
        );
    }
    layout
});

/// Every name a bitmap over `layout` can decode to: top-level fields past the header, and
/// `Parent.Child` for the sub-fields of compound fields.
static NAMEABLE: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let layout = &*LAYOUT;
    let mut names: HashSet<String> = layout.top_level.iter().skip(1).cloned().collect();
    for (position, children) in &layout.nested {
        let parent = &layout.top_level[*position];
        names.extend(children.iter().map(|c| format!("{parent}.{c}")));
    }
    names
});

fn assert_distinct(names: &[String]) {
    let mut seen = HashSet::new();
    for name in names {
        assert!(seen.insert(name), "{name:?} appears twice in {names:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries: Vec<&str> = text.split([',', '\n']).collect();

    match FieldSet::from_bitmaps(&entries, &LAYOUT) {
        Ok(set) => {
            let names = set.names();
            assert_distinct(names);
            for name in names {
                assert!(NAMEABLE.contains(name), "{name:?} is not in the layout");
            }
            // Entries are merged: the whole array decodes to the entries decoded one by one,
            // concatenated in order, duplicates dropped.
            let mut merged: Vec<String> = Vec::new();
            for entry in &entries {
                let one = FieldSet::from_bitmaps(&[entry], &LAYOUT)
                    .unwrap_or_else(|e| panic!("{entry:?} fails alone ({e}) but not in the array"));
                for name in one.into_names() {
                    if !merged.contains(&name) {
                        merged.push(name);
                    }
                }
            }
            assert_eq!(names, merged.as_slice());
        }
        Err(_) => {
            // Some single entry is to blame.
            assert!(
                entries
                    .iter()
                    .any(|entry| FieldSet::from_bitmaps(&[entry], &LAYOUT).is_err()),
                "the array fails but every entry decodes alone: {entries:?}"
            );
        }
    }

    let blank_or_padded = |e: &&str| e.trim().is_empty() || e.trim() != *e;
    match FieldSet::from_names(&entries) {
        Ok(set) => {
            let names = set.names();
            assert_distinct(names);
            assert!(!entries.iter().any(blank_or_padded));
            let distinct: HashSet<&str> = entries.iter().copied().collect();
            assert_eq!(names.len(), distinct.len());
            for name in names {
                assert!(distinct.contains(name.as_str()), "{name:?} was not given");
            }
        }
        Err(_) => assert!(entries.iter().any(blank_or_padded)),
    }
});
