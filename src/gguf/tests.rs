//! Bad input for the header reader: each corruption gives a clear error, never a panic.

use super::*;
use std::io::Cursor;

/// A tiny valid GGUF v3 file: one F32 tensor of 8 elements and a little metadata.
struct Builder {
    version: u32,
    tensor_count: Option<u64>,
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<u8>,
    data: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Builder {
    fn new() -> Builder {
        let mut b = Builder {
            version: 3,
            tensor_count: None,
            kv: Vec::new(),
            kv_count: 0,
            tensors: Vec::new(),
            data: Vec::new(),
        };
        b.kv_string("general.architecture", "llama");
        b
    }

    fn kv_string(&mut self, key: &str, value: &str) -> &mut Self {
        string(&mut self.kv, key);
        self.kv.extend(8u32.to_le_bytes());
        string(&mut self.kv, value);
        self.kv_count += 1;
        self
    }

    fn kv_u32(&mut self, key: &str, value: u32) -> &mut Self {
        string(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(value.to_le_bytes());
        self.kv_count += 1;
        self
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        string(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(ggml_type.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self
    }

    fn build(&self) -> Vec<u8> {
        let count = self.tensors_in_table();
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count.unwrap_or(count).to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.tensors);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }

    fn tensors_in_table(&self) -> u64 {
        // Every tensor this builder writes is named "t" followed by a digit.
        self.tensors
            .windows(9)
            .filter(|w| w == b"\x02\0\0\0\0\0\0\0t")
            .count() as u64
    }
}

fn parse(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    read(
        Cursor::new(bytes),
        bytes.len() as u64,
        Path::new("model.gguf"),
    )
}

fn error_of(bytes: &[u8]) -> String {
    let err = parse(bytes).expect_err("must be refused");
    let text = err.to_string();
    assert!(text.starts_with("model.gguf: "), "names the file: {text}");
    assert!(text.contains("hint: "), "says what to do: {text}");
    text
}

fn valid() -> Builder {
    let mut b = Builder::new();
    b.kv_u32("llama.block_count", 1).tensor("t0", &[8], 0, 0);
    b.data = vec![0; 32];
    b
}

#[test]
fn a_valid_file_parses() {
    let file = parse(&valid().build()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(file.arch_u64("block_count"), Some(1));
    assert_eq!(file.parameters(), 8);
    assert_eq!(file.tensor_bytes(), 32);
    assert_eq!(file.data_offset % 32, 0);
}

#[test]
fn wrong_magic_is_named() {
    let mut bytes = valid().build();
    bytes[..4].copy_from_slice(b"PK\x03\x04");
    assert!(error_of(&bytes).contains("not a GGUF file"));
}

#[test]
fn unsupported_versions_are_refused() {
    for version in [1, 4, 99] {
        let mut b = valid();
        b.version = version;
        assert!(error_of(&b.build()).contains(&format!("version {version}")));
    }
}

#[test]
fn truncation_anywhere_is_an_error() {
    let bytes = valid().build();
    for len in 0..bytes.len() {
        let text = error_of(&bytes[..len]);
        assert!(
            text.contains("truncated")
                || text.contains("impossible")
                || text.contains("left in the file"),
            "at {len}: {text}"
        );
    }
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut b = valid();
    b.tensor_count = Some(u64::MAX / 2);
    assert!(error_of(&b.build()).contains("tensor count"));
    let mut bytes = valid().build();
    // The metadata count sits after magic, version and tensor count.
    bytes[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(error_of(&bytes).contains("metadata count"));
}

#[test]
fn absurd_string_lengths_are_refused() {
    let mut bytes = valid().build();
    // The first key's length follows the 24-byte preamble.
    bytes[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(error_of(&bytes).contains("claims"));
}

#[test]
fn tensors_past_the_end_are_refused() {
    let mut b = Builder::new();
    b.tensor("t0", &[8], 0, 0);
    b.data = vec![0; 16];
    assert!(error_of(&b.build()).contains("past the end"));
}

#[test]
fn misaligned_tensors_are_refused() {
    let mut b = Builder::new();
    b.tensor("t0", &[8], 0, 4);
    b.data = vec![0; 64];
    assert!(error_of(&b.build()).contains("alignment"));
}

#[test]
fn unknown_types_and_bad_shapes_are_refused() {
    let mut b = Builder::new();
    b.tensor("t0", &[8], 77, 0);
    b.data = vec![0; 64];
    assert!(error_of(&b.build()).contains("unknown GGML type 77"));

    let mut b = Builder::new();
    b.tensor("t0", &[u64::MAX, 4], 0, 0);
    assert!(error_of(&b.build()).contains("impossible shape"));

    let mut b = Builder::new();
    b.tensor("t0", &[1, 2, 3, 4, 5], 0, 0);
    assert!(error_of(&b.build()).contains("dimensions"));

    // 40 elements per row cannot be Q4_0 blocks of 32.
    let mut b = Builder::new();
    b.tensor("t0", &[40, 2], 2, 0);
    b.data = vec![0; 128];
    assert!(error_of(&b.build()).contains("whole Q4_0 blocks"));
}

#[test]
fn overlapping_tensors_disagree_with_the_file() {
    let mut b = Builder::new();
    b.tensor("t0", &[16], 0, 0).tensor("t1", &[8], 0, 32);
    b.data = vec![0; 96];
    assert!(error_of(&b.build()).contains("overlaps"));
}

#[test]
fn bad_alignment_metadata_is_refused() {
    let mut b = valid();
    b.kv_u32("general.alignment", 24);
    assert!(error_of(&b.build()).contains("power of two"));
}

#[test]
fn long_arrays_keep_only_their_length() {
    let mut b = valid();
    string(&mut b.kv, "tokenizer.ggml.tokens");
    b.kv.extend(9u32.to_le_bytes());
    b.kv.extend(8u32.to_le_bytes());
    b.kv.extend(1000u64.to_le_bytes());
    for i in 0..1000 {
        string(&mut b.kv, &format!("tok{i}"));
    }
    b.kv_count += 1;
    let file = parse(&b.build()).unwrap();
    assert_eq!(
        file.get("tokenizer.ggml.tokens").unwrap().array_len(),
        Some(1000)
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// `PROPTEST_CASES` makes a long fuzzing session; the test suite runs a short one.
    fn fuzz_cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(2000), ..ProptestConfig::default() })]

        /// Any byte flipped, anywhere, in a valid file: an error or a file, never a panic.
        #[test]
        fn mutated_headers_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = valid().build();
            let len = bytes.len();
            for (at, value) in flips {
                bytes[at % len] = value;
            }
            let _ = parse(&bytes);
        }
    }
}
