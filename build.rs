//! Embeds the dashboard's built files (`dashboard/dist/`, committed; see docs/dashboard.md) in
//! the binary: writes `$OUT_DIR/dashboard_files.rs`, a sorted table of `(path, bytes)` with one
//! `include_bytes!` per file, so `larachat serve` needs no Node and no files next to it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let dist = root.join("dashboard").join("dist");
    // A directory here makes cargo rerun the script when anything below it changes.
    println!("cargo:rerun-if-changed=dashboard/dist");
    let mut files = Vec::new();
    if dist.is_dir() {
        walk(&dist, &dist, &mut files);
    }
    if !files.iter().any(|(rel, _)| rel == "index.html") {
        panic!(
            "{} has no index.html: build the dashboard (cd dashboard && npm ci && npm run build)",
            dist.display()
        );
    }
    files.sort();
    let mut out = String::from("/// The dashboard's files, by path below `dashboard/dist/`.\n");
    out.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        writeln!(
            out,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.display().to_string()
        )
        .expect("writing to a String");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("dashboard_files.rs");
    fs::write(dest, out).expect("writing dashboard_files.rs");
}

fn walk(base: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(base, &path, files);
        } else {
            let rel = path.strip_prefix(base).expect("below dist");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push((rel, path));
        }
    }
}
