//! The real test weights that scripts/fetch-test-models.sh caches: present, intact, GGUF.
//! Later tests read them through `test_model`; a missing file fails with what to run.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::PathBuf;

const MODELS: [(&str, &str); 2] = [
    (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    (
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
];

fn test_model(file: &str) -> PathBuf {
    let dir = std::env::var_os("FITBENCH_TEST_MODELS").unwrap_or_else(|| {
        panic!("FITBENCH_TEST_MODELS is not set: run the tests with scripts/test.sh, which fetches the test models")
    });
    let path = PathBuf::from(dir).join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-test-models.sh",
        path.display()
    );
    path
}

#[test]
fn test_models_are_fetched_and_match_their_sha256() {
    for (file, expected) in MODELS {
        let mut reader = std::fs::File::open(test_model(file)).unwrap();
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic).unwrap();
        assert_eq!(&magic, b"GGUF", "{file}");
        let mut hasher = Sha256::new();
        hasher.update(magic);
        std::io::copy(&mut reader, &mut hasher).unwrap();
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, expected, "{file}");
    }
}
