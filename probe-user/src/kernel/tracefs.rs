//! Tracepoint existence and field offsets from tracefs `format` files.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs not found at {0}: mount it (`mount -t tracefs nodev /sys/kernel/tracing`) or \
         pass --tracefs DIR"
    )]
    NotMounted(PathBuf),
    #[error(
        "this kernel lacks the tracepoint {category}:{name} ({path} is missing); schedlat needs \
         it for {needed_for}{hint}"
    )]
    MissingTracepoint {
        category: String,
        name: String,
        path: String,
        needed_for: String,
        hint: String,
    },
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: no field `{field}` in the tracepoint format")]
    NoField { path: String, field: String },
}

/// The tracefs mount we read formats from.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// `root` is the tracefs mount point, e.g. /sys/kernel/tracing.
    pub fn new(root: &Path) -> Result<Self, TracefsError> {
        if !root.join("events").is_dir() {
            return Err(TracefsError::NotMounted(root.to_path_buf()));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Default: /sys/kernel/tracing, else the old debugfs location.
    pub fn discover() -> Result<Self, TracefsError> {
        let primary = Path::new("/sys/kernel/tracing");
        match Self::new(primary) {
            Ok(t) => Ok(t),
            Err(e) => Self::new(Path::new("/sys/kernel/debug/tracing")).map_err(|_| e),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn format_path(&self, category: &str, name: &str) -> PathBuf {
        self.root
            .join("events")
            .join(category)
            .join(name)
            .join("format")
    }

    pub fn has(&self, category: &str, name: &str) -> bool {
        self.format_path(category, name).exists()
    }

    /// Fail unless `category:name` exists, saying what needs it.
    pub fn require(
        &self,
        category: &str,
        name: &str,
        needed_for: &str,
        hint: &str,
    ) -> Result<(), TracefsError> {
        let path = self.format_path(category, name);
        if path.exists() {
            Ok(())
        } else {
            Err(TracefsError::MissingTracepoint {
                category: category.into(),
                name: name.into(),
                path: path.display().to_string(),
                needed_for: needed_for.into(),
                hint: hint.into(),
            })
        }
    }

    /// Byte offset of `field` in the tracepoint's record.
    pub fn field_offset(
        &self,
        category: &str,
        name: &str,
        field: &str,
    ) -> Result<u32, TracefsError> {
        let path = self.format_path(category, name);
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.display().to_string(),
            cause: source,
        })?;
        parse_field_offset(&text, field).ok_or_else(|| TracefsError::NoField {
            path: path.display().to_string(),
            field: field.into(),
        })
    }
}

/// Parse `field:<type> <name>;\toffset:<n>;...` lines of a tracepoint format file.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';');
        let decl = parts.next()?.trim();
        // The name is the last word of the declaration, minus any array suffix.
        let name = decl.rsplit([' ', '*']).next()?.split('[').next()?;
        if name != field {
            continue;
        }
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("offset:") {
                return v.trim().parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUTEX_FORMAT: &str = "name: sys_enter_futex\nID: 400\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:u32 * uaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int op;\toffset:24;\tsize:8;\tsigned:0;\n\
        \tfield:char prev_comm[16];\toffset:32;\tsize:16;\tsigned:0;\n";

    #[test]
    fn parses_offsets() {
        assert_eq!(parse_field_offset(FUTEX_FORMAT, "op"), Some(24));
        assert_eq!(parse_field_offset(FUTEX_FORMAT, "uaddr"), Some(16));
        assert_eq!(parse_field_offset(FUTEX_FORMAT, "prev_comm"), Some(32));
        assert_eq!(parse_field_offset(FUTEX_FORMAT, "ret"), None);
    }

    #[test]
    fn missing_mount_says_how_to_fix() {
        let e = Tracefs::new(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount -t tracefs"), "{e}");
    }
}
