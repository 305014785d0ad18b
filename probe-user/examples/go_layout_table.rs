//! Builds goruntime/layouts.json, the layout table for stripped Go binaries, from the Go
//! fixtures (`cargo xtask go-layouts` runs this after building them):
//!
//!     go_layout_table <target/go-fixtures> <out.json>
//!
//! Each <go version>/ directory's unstripped executables (plain and PIE) give one entry
//! (`table::learn_dir`): layouts from DWARF, recipes that hold in all of them.
use std::{fs, path::PathBuf};

use anyhow::{Context, Result, bail};
use schedlat::goruntime::table;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [dir, out] = &args[..] else {
        bail!("usage: go_layout_table <go-fixtures dir> <out.json>");
    };
    let mut versions: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    versions.retain(|p| p.is_dir());
    versions.sort();
    let mut entries = Vec::new();
    for v in &versions {
        let entry = table::learn_dir(v)?;
        println!(
            "go-layouts: {} from {}: {} symbols",
            entry.version,
            v.display(),
            entry.symbols.len()
        );
        entries.push(entry);
    }
    if entries.is_empty() {
        bail!(
            "no Go fixtures under {}: run `cargo xtask setup` first",
            dir.display()
        );
    }
    let json = serde_json::to_string_pretty(&entries)? + "\n";
    fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
    println!("go-layouts: wrote {}", out.display());
    Ok(())
}
