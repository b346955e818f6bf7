//! GGML tensor types: block size and bytes per block, from ggml's `type_traits` table.

use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(u32);

/// id, name, elements per block, bytes per block. Ids 4, 5 and 31–33, 36–38 were removed
/// from ggml and never appear in files written today.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);
    pub const TQ1_0: GgmlType = GgmlType(34);
    pub const TQ2_0: GgmlType = GgmlType(35);

    /// The type with this on-disk id, if ggml still defines it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPES.iter().any(|t| t.0 == id).then_some(GgmlType(id))
    }

    /// Case-insensitive name lookup: `q4_k` = `Q4_K`.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|t| t.1.eq_ignore_ascii_case(name))
            .map(|t| GgmlType(t.0))
    }

    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPES.iter().map(|t| GgmlType(t.0))
    }

    fn traits(self) -> (u32, &'static str, u64, u64) {
        // Values are only built from ids found in TYPES.
        *TYPES.iter().find(|t| t.0 == self.0).unwrap_or(&TYPES[0])
    }

    pub fn id(self) -> u32 {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.traits().1
    }

    pub fn block_size(self) -> u64 {
        self.traits().2
    }

    pub fn block_bytes(self) -> u64 {
        self.traits().3
    }

    /// Exact bits per weight, scales included: Q4_0 = 4.5, Q6_K = 6.5625.
    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_size() as f64
    }

    /// Bytes for `elements` weights, or None when they do not fill whole blocks.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        elements
            .is_multiple_of(self.block_size())
            .then(|| elements / self.block_size())
            .and_then(|blocks| blocks.checked_mul(self.block_bytes()))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for GgmlType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_per_weight_match_ggml() {
        let expected = [
            ("F32", 32.0),
            ("F16", 16.0),
            ("BF16", 16.0),
            ("Q8_0", 8.5),
            ("Q6_K", 6.5625),
            ("Q5_1", 6.0),
            ("Q5_0", 5.5),
            ("Q5_K", 5.5),
            ("Q4_1", 5.0),
            ("Q4_0", 4.5),
            ("Q4_K", 4.5),
            ("Q3_K", 3.4375),
            ("Q2_K", 2.625),
        ];
        for (name, bpw) in expected {
            assert_eq!(
                GgmlType::from_name(name).unwrap().bits_per_weight(),
                bpw,
                "{name}"
            );
        }
    }

    #[test]
    fn names_are_case_insensitive_and_ids_round_trip() {
        assert_eq!(GgmlType::from_name("q4_k"), Some(GgmlType::Q4_K));
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
    }

    #[test]
    fn partial_blocks_have_no_size() {
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(65), None);
        assert_eq!(GgmlType::Q6_K.bytes_for(256 * 3), Some(630));
    }
}
