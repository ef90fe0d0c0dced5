//! Decoding the field lists of a change event header: `changedFields`, `nulledFields` and
//! `diffFields`.
//!
//! On the Pub/Sub API these arrive as bitmaps over the positions of the event's **writer schema**
//! (docs/salesforce.md, "Change events: header and bitmaps"), not as names:
//!
//! - `"0x…"`: a hex number; bit i (least significant = 0) names top-level field i. Bit 0 is
//!   `ChangeEventHeader` itself and names no field.
//! - `"<pos>-0x…"`: the same over the fields of the compound field (a nested record such as
//!   `Name` or `Address`) at top-level position `pos`; a set bit j names `Parent.Child`.
//!
//! The bitmap means nothing without the schema that wrote it, so decoding takes a [`FieldLayout`]
//! built from that schema (see `avro.rs`). The public clients differ in small ways and several are
//! wrong on inputs Salesforce does send, so the rules here are the tolerant ones Salesforce's own
//! examples and the clients' failures call for (docs/salesforce.md,
//! "Change events: header and bitmaps"): upper- and lower-case hex, odd digit counts, bits past the
//! end of the schema ignored (a newer schema may have added fields), arrays holding only nested
//! entries (`nulledFields` when only sub-fields were nulled), and every element is inspected (not
//! only the last one, as some public helpers do).
//!
//! What cannot be read is refused with a [`BitmapError`] naming the entry: the caller dead-letters
//! that one event with the reason and goes on with the stream (docs/salesforce.md,
//! "Failures seen in other clients": one unreadable event stopped the stream).
//!
//! Choices Salesforce leaves open:
//!
//! - **No collapsing.** When every sub-field of a compound field is set, the result still lists
//!   each `Parent.Child` (as most public clients do; one collapses to `Parent`). The
//!   normalized event promises sub-field names (`Name.FirstName`), and a consumer asking "did
//!   FirstName change" should not have to know the sub-field count of the schema. A set
//!   *top-level* bit of a compound field is reported as the parent name; [`FieldSet::touches`]
//!   treats it as covering all sub-fields.
//! - **Order** is the order of the entries, and ascending bit order within one entry, with
//!   duplicates dropped: the order the public clients produce, so logs compare easily.
//! - Several top-level entries, or several entries for one position, are merged rather than
//!   refused: nothing is lost by reading them all.
//!
//! CometD delivers the same lists as plain names; [`FieldSet::from_names`] takes that form into
//! the same type, so everything downstream is transport-blind.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The field names of one writer schema, by position: what a bitmap indexes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldLayout {
    /// Top-level field names; index 0 is `ChangeEventHeader`.
    pub top_level: Vec<String>,
    /// For each top-level position holding a compound field (a nested record, possibly inside
    /// a union), the names of its sub-fields in schema order.
    pub nested: BTreeMap<usize, Vec<String>>,
}

/// Decoded field names, in the order described in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSet(Vec<String>);

/// Why one bitmap entry could not be decoded. Each variant names the entry as received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bitmap entry {entry:?} is malformed: {problem}")]
    Malformed { entry: String, problem: String },
    #[error(
        "bitmap entry {entry:?} names top-level position {position}, but the writer schema has {field_count} fields"
    )]
    PositionOutOfRange {
        entry: String,
        position: usize,
        field_count: usize,
    },
    #[error(
        "bitmap entry {entry:?} names sub-fields of position {position} ({field}), which is not a compound field in the writer schema"
    )]
    NotCompound {
        entry: String,
        position: usize,
        field: String,
    },
    #[error("field list entry {entry:?} is not a field name")]
    BadName { entry: String },
}

impl BitmapError {
    fn malformed(entry: &str, problem: impl Into<String>) -> Self {
        BitmapError::Malformed {
            entry: entry.to_string(),
            problem: problem.into(),
        }
    }
}

impl FieldLayout {
    /// A layout from top-level names and the sub-field names of compound fields by position.
    pub fn new(top_level: Vec<String>, nested: BTreeMap<usize, Vec<String>>) -> Self {
        Self { top_level, nested }
    }
}

impl FieldSet {
    /// Decodes a Pub/Sub bitmap array against the writer schema's layout.
    pub fn from_bitmaps<S: AsRef<str>>(
        entries: &[S],
        layout: &FieldLayout,
    ) -> Result<Self, BitmapError> {
        let mut set = Builder::default();
        for entry in entries {
            let entry = entry.as_ref();
            match entry.split_once('-') {
                None => {
                    let bits = parse_hex_bits(entry, entry)?;
                    for bit in bits.take_while(|&b| b < layout.top_level.len()) {
                        // Bit 0 is the header record itself.
                        if bit > 0 {
                            set.push(layout.top_level[bit].clone());
                        }
                    }
                }
                Some((position, bitmap)) => {
                    let position = parse_position(entry, position)?;
                    let parent = layout.top_level.get(position).ok_or_else(|| {
                        BitmapError::PositionOutOfRange {
                            entry: entry.to_string(),
                            position,
                            field_count: layout.top_level.len(),
                        }
                    })?;
                    let children = match layout.nested.get(&position) {
                        Some(children) if position > 0 => children,
                        _ => {
                            return Err(BitmapError::NotCompound {
                                entry: entry.to_string(),
                                position,
                                field: parent.clone(),
                            });
                        }
                    };
                    let bits = parse_hex_bits(entry, bitmap)?;
                    for bit in bits.take_while(|&b| b < children.len()) {
                        set.push(format!("{parent}.{}", children[bit]));
                    }
                }
            }
        }
        Ok(set.finish())
    }

    /// Takes CometD's form, a list of plain names (`Title`, `Name.FirstName`), into the same
    /// type. Names are kept as given, duplicates dropped; an empty or blank name is refused.
    pub fn from_names<S: AsRef<str>>(entries: &[S]) -> Result<Self, BitmapError> {
        let mut set = Builder::default();
        for entry in entries {
            let name = entry.as_ref();
            if name.trim().is_empty() || name.trim() != name {
                return Err(BitmapError::BadName {
                    entry: name.to_string(),
                });
            }
            set.push(name.to_string());
        }
        Ok(set.finish())
    }

    /// The names, in decoded order.
    pub fn names(&self) -> &[String] {
        &self.0
    }

    pub fn into_names(self) -> Vec<String> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Exactly this name is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|n| n == name)
    }

    /// The field is covered: it is in the set, or it is a sub-field (`Name.FirstName`) whose
    /// parent (`Name`) is in the set as a whole.
    pub fn touches(&self, name: &str) -> bool {
        self.contains(name)
            || name
                .split_once('.')
                .is_some_and(|(parent, _)| self.contains(parent))
    }
}

impl fmt::Display for FieldSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Keeps first-seen order and drops duplicates.
#[derive(Default)]
struct Builder {
    names: Vec<String>,
    seen: HashSet<String>,
}

impl Builder {
    fn push(&mut self, name: String) {
        if self.seen.insert(name.clone()) {
            self.names.push(name);
        }
    }

    fn finish(self) -> FieldSet {
        FieldSet(self.names)
    }
}

/// Parses the decimal position before the `-` of a nested entry.
fn parse_position(entry: &str, text: &str) -> Result<usize, BitmapError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BitmapError::malformed(
            entry,
            format!("the position {text:?} is not a decimal number"),
        ));
    }
    text.parse::<usize>()
        .map_err(|_| BitmapError::malformed(entry, format!("the position {text:?} is too large")))
}

/// Parses `0x<hex>` and yields the indexes of the set bits in ascending order. The digits are
/// one big-endian number of any length, so the last digit holds bits 0..=3.
fn parse_hex_bits(entry: &str, text: &str) -> Result<impl Iterator<Item = usize>, BitmapError> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .ok_or_else(|| BitmapError::malformed(entry, "expected a 0x-prefixed hex bitmap"))?;
    if digits.is_empty() {
        return Err(BitmapError::malformed(entry, "no hex digits after 0x"));
    }
    let nibbles = digits
        .chars()
        .rev()
        .map(|c| {
            c.to_digit(16)
                .ok_or_else(|| BitmapError::malformed(entry, format!("{c:?} is not a hex digit")))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    Ok(nibbles.into_iter().enumerate().flat_map(|(i, nibble)| {
        (0..4)
            .filter(move |bit| nibble & (1 << bit) != 0)
            .map(move |bit| i * 4 + bit)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Fixture {
        schema_fields: Vec<String>,
        nested_fields: BTreeMap<String, Vec<String>>,
        bigger_example: BiggerExample,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct BiggerExample {
        bitmap: String,
        bits: Vec<usize>,
    }

    #[derive(Deserialize)]
    struct Case {
        note: String,
        bitmap: Vec<String>,
        expect: Vec<String>,
    }

    fn fixture() -> Fixture {
        serde_json::from_str(include_str!("../../tests/fixtures/cdc-bitmaps.json")).unwrap()
    }

    fn layout_of(f: &Fixture) -> FieldLayout {
        let nested = f
            .schema_fields
            .iter()
            .enumerate()
            .filter_map(|(i, name)| f.nested_fields.get(name).map(|c| (i, c.clone())))
            .collect();
        FieldLayout::new(f.schema_fields.clone(), nested)
    }

    fn account() -> FieldLayout {
        layout_of(&fixture())
    }

    fn decode(entries: &[&str]) -> Result<Vec<String>, BitmapError> {
        FieldSet::from_bitmaps(entries, &account()).map(FieldSet::into_names)
    }

    #[test]
    fn every_fixture_case_decodes_to_the_documented_names() {
        let f = fixture();
        let layout = layout_of(&f);
        assert!(!f.cases.is_empty());
        for case in &f.cases {
            let got = FieldSet::from_bitmaps(&case.bitmap, &layout)
                .unwrap_or_else(|e| panic!("{}: {e}", case.note));
            assert_eq!(got.names(), case.expect, "{}", case.note);
        }
    }

    #[test]
    fn the_bigger_documented_bitmap_sets_the_documented_bits() {
        let f = fixture();
        // A layout wide enough for bit 30, named by position, shows exactly which bits are set.
        let layout = FieldLayout::new((0..40).map(|i| format!("F{i}")).collect(), BTreeMap::new());
        let got = FieldSet::from_bitmaps(&[f.bigger_example.bitmap.as_str()], &layout).unwrap();
        let want: Vec<String> = f
            .bigger_example
            .bits
            .iter()
            .map(|b| format!("F{b}"))
            .collect();
        assert_eq!(got.names(), want);
        // Against the Account layout (23 fields) only the bits below 23 name fields.
        assert_eq!(
            decode(&[f.bigger_example.bitmap.as_str()]).unwrap(),
            ["ShippingAddress", "Phone", "Fax", "Sic"]
        );
    }

    #[test]
    fn lower_and_upper_case_hex_agree() {
        // 0x4E0 = bits 5,6,7,10; the letter digit is where a public client went wrong.
        let upper = decode(&["0x4E0"]).unwrap();
        assert_eq!(upper, ["ShippingAddress", "Phone", "Fax", "Sic"]);
        assert_eq!(decode(&["0x4e0"]).unwrap(), upper);
        assert_eq!(decode(&["0X4e0"]).unwrap(), upper);
        assert_eq!(
            decode(&["4-0xa"]).unwrap(),
            decode(&["4-0xA"]).unwrap(),
            "nested entries too"
        );
        assert_eq!(
            decode(&["4-0xa"]).unwrap(),
            ["BillingAddress.City", "BillingAddress.PostalCode"]
        );
    }

    #[test]
    fn nested_entries_are_read_wherever_they_sit() {
        // A nested entry first and the top-level bitmap last: some public helpers only look
        // at the last element; this decoder reads every one.
        assert_eq!(
            decode(&["4-0x06", "0x400000"]).unwrap(),
            [
                "BillingAddress.City",
                "BillingAddress.State",
                "LastModifiedDate"
            ]
        );
        // Two nested entries, no top-level one.
        assert_eq!(
            decode(&["4-0x01", "5-0x200"]).unwrap(),
            ["BillingAddress.Street", "ShippingAddress.GeocodeAccuracy"]
        );
    }

    #[test]
    fn all_nested_bits_set_do_not_collapse_to_the_parent() {
        let all = decode(&["4-0x3FF"]).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], "BillingAddress.Street");
        assert_eq!(all[9], "BillingAddress.GeocodeAccuracy");
        assert!(!all.contains(&"BillingAddress".to_string()));
        // Nested bits past the sub-field count are ignored like top-level ones.
        assert_eq!(decode(&["4-0xFFFF"]).unwrap(), all);
    }

    #[test]
    fn a_compound_top_level_bit_names_the_parent_and_covers_its_sub_fields() {
        let set = FieldSet::from_bitmaps(&["0x10"], &account()).unwrap();
        assert_eq!(set.names(), ["BillingAddress"]);
        assert!(set.touches("BillingAddress.City"));
        assert!(!set.contains("BillingAddress.City"));
        assert!(!set.touches("ShippingAddress.City"));
        let nested = FieldSet::from_bitmaps(&["4-0x02"], &account()).unwrap();
        assert!(nested.touches("BillingAddress.City"));
        assert!(!nested.touches("BillingAddress"));
    }

    #[test]
    fn duplicates_merge_and_empty_arrays_are_empty() {
        assert_eq!(
            decode(&["0x10000", "0x410000", "4-0x2", "4-0x6"]).unwrap(),
            [
                "Description",
                "LastModifiedDate",
                "BillingAddress.City",
                "BillingAddress.State"
            ]
        );
        assert!(decode(&[]).unwrap().is_empty());
        assert!(decode(&["0x0", "4-0x0"]).unwrap().is_empty());
    }

    #[test]
    fn long_bitmaps_are_one_big_endian_number() {
        // 40 hex digits: only the lowest bits fall inside the schema.
        let long = format!("0x{}400001", "F".repeat(34));
        assert_eq!(decode(&[long.as_str()]).unwrap(), ["LastModifiedDate"]);
        // Leading zeros change nothing.
        assert_eq!(decode(&["0x0000000002"]).unwrap(), ["Name"]);
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry_named() {
        let cases: &[(&str, &str)] = &[
            ("", "0x-prefixed"),
            ("0x", "no hex digits"),
            ("410000", "0x-prefixed"),
            ("0x41G000", "'G' is not a hex digit"),
            ("0x 41", "' ' is not a hex digit"),
            ("Description", "0x-prefixed"),
            ("-0x06", "position \"\""),
            ("a-0x06", "position \"a\""),
            ("+4-0x06", "position \"+4\""),
            ("4-", "0x-prefixed"),
            ("4-0x", "no hex digits"),
            ("4-06", "0x-prefixed"),
            ("4-0x0-6", "'-' is not a hex digit"),
            ("99999999999999999999999-0x1", "too large"),
        ];
        for (entry, problem) in cases {
            let err = decode(&["0x400000", entry]).unwrap_err();
            match &err {
                BitmapError::Malformed { entry: named, .. } => assert_eq!(named, entry),
                other => panic!("{entry:?}: {other}"),
            }
            assert!(err.to_string().contains(problem), "{entry:?}: {err}");
        }
    }

    #[test]
    fn nested_entries_must_name_a_compound_field_inside_the_schema() {
        assert_eq!(
            decode(&["23-0x1"]).unwrap_err(),
            BitmapError::PositionOutOfRange {
                entry: "23-0x1".into(),
                position: 23,
                field_count: 23
            }
        );
        assert_eq!(
            decode(&["6-0x1"]).unwrap_err(),
            BitmapError::NotCompound {
                entry: "6-0x1".into(),
                position: 6,
                field: "Phone".into()
            }
        );
        // The header is a record, but never a compound field of the object.
        let mut layout = account();
        layout.nested.insert(0, vec!["entityName".into()]);
        let err = FieldSet::from_bitmaps(&["0-0x1"], &layout).unwrap_err();
        assert!(matches!(err, BitmapError::NotCompound { position: 0, .. }));
        assert!(err.to_string().contains("ChangeEventHeader"), "{err}");
    }

    #[test]
    fn cometd_names_give_the_same_type() {
        let from_names =
            FieldSet::from_names(&["Description", "LastModifiedDate", "Description"]).unwrap();
        let from_bits = FieldSet::from_bitmaps(&["0x410000"], &account()).unwrap();
        assert_eq!(from_names, from_bits);
        assert_eq!(from_names.to_string(), "Description,LastModifiedDate");
        assert!(
            FieldSet::from_names(&["Name.FirstName"])
                .unwrap()
                .touches("Name.FirstName")
        );
        for bad in ["", "  ", " Title"] {
            assert_eq!(
                FieldSet::from_names(&[bad]).unwrap_err(),
                BitmapError::BadName { entry: bad.into() }
            );
        }
    }
}
