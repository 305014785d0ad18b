//! The Go version recorded in a binary's `.go.buildinfo` section (Go's debug/buildinfo format,
//! src/debug/buildinfo/buildinfo.go; written by cmd/link/internal/ld/data.go).
use object::{ObjectSection, ReadRef};

use super::GoError;

/// 14-byte magic at the start of .go.buildinfo.
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// The header is 32 bytes: magic, pointer size, flags, then two pointers (old format).
const HEADER_LEN: usize = 32;
/// flags bit 1: version and module info are inline varint-prefixed strings (Go >= 1.18).
const FLAG_INLINE: u8 = 0x2;
/// flags bit 0: big-endian pointers (old format).
const FLAG_BIG_ENDIAN: u8 = 0x1;
/// No real version string is this long; anything longer is a malformed file.
const MAX_VERSION_LEN: u64 = 256;

/// A parsed Go version, e.g. "go1.27.3" -> 1.27.3. `raw` keeps the full string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoVersion {
    pub raw: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl GoVersion {
    /// "go1.19.8", "go1.21rc2", "go1.22.0 X:nocoverageredesign" ("devel ..." has no number).
    pub fn parse(raw: &str) -> Option<GoVersion> {
        let rest = raw.strip_prefix("go")?;
        let rest = rest.split_whitespace().next()?;
        let mut nums = rest.split('.').map(|p| {
            let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().flatten().unwrap_or(0);
        Some(GoVersion {
            raw: raw.to_owned(),
            major,
            minor,
            patch,
        })
    }

    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The version in .go.buildinfo; None if the binary has no such section.
pub fn from_section<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
) -> Result<Option<String>, GoError> {
    let Some(section) = super::section_by_name(file, ".go.buildinfo") else {
        return Ok(None);
    };
    parse_section(file, section).map(Some)
}

fn parse_section<'d, 'f, R: ReadRef<'d>>(
    file: &'f object::File<'d, R>,
    section: object::Section<'d, 'f, R>,
) -> Result<String, GoError> {
    // Only the header and the inline version string are read (through a BudgetedFile, a
    // section's whole claimed size would be charged, and refused, for nothing).
    let want = section.size().min(HEADER_LEN as u64 + 10 + MAX_VERSION_LEN);
    let data = super::section_bytes(file, &section, section.address(), want).ok_or_else(|| {
        GoError::Malformed {
            what: ".go.buildinfo section data lies outside the file".into(),
        }
    })?;
    let header = data.get(..HEADER_LEN).ok_or(GoError::NotGo {
        why: ".go.buildinfo is shorter than its 32-byte header",
    })?;
    if !header.starts_with(MAGIC) {
        return Err(GoError::NotGo {
            why: ".go.buildinfo lacks the \"\\xff Go buildinf:\" magic",
        });
    }
    let ptr_size = header[14];
    let flags = header[15];
    if flags & FLAG_INLINE != 0 {
        // Go >= 1.18: varint length + bytes, right after the header.
        let (s, _) = read_varint_string(&data[HEADER_LEN..])?;
        return Ok(s);
    }
    // Older Go: a pointer to a Go string header {data *byte, len int} for the version.
    let big_endian = flags & FLAG_BIG_ENDIAN != 0;
    let ptr_size = match ptr_size {
        4 | 8 => usize::from(ptr_size),
        n => {
            return Err(GoError::Malformed {
                what: format!(".go.buildinfo pointer size {n} (expected 4 or 8)"),
            });
        }
    };
    let read_ptr = |b: &[u8]| -> Option<u64> {
        let b = b.get(..ptr_size)?;
        let mut v = 0u64;
        for i in 0..ptr_size {
            let byte = if big_endian {
                b[i]
            } else {
                b[ptr_size - 1 - i]
            };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let malformed = |what: &str| GoError::Malformed {
        what: format!(".go.buildinfo (old format): {what}"),
    };
    let str_hdr_addr = read_ptr(&header[16..]).ok_or_else(|| malformed("truncated header"))?;
    let str_hdr = read_at(file, str_hdr_addr, 2 * ptr_size as u64)
        .ok_or_else(|| malformed("version string header address not in the file"))?;
    let data_addr = read_ptr(str_hdr).ok_or_else(|| malformed("truncated string header"))?;
    let len = read_ptr(&str_hdr[ptr_size..]).ok_or_else(|| malformed("truncated string header"))?;
    if len > MAX_VERSION_LEN {
        return Err(malformed(&format!("version length {len} is implausible")));
    }
    let bytes =
        read_at(file, data_addr, len).ok_or_else(|| malformed("version bytes not in the file"))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// `len` bytes at virtual address `addr`, from whichever loadable segment holds them.
pub(crate) fn read_at<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    addr: u64,
    len: u64,
) -> Option<&'d [u8]> {
    super::segment_bytes(file, addr, len)
}

/// A uvarint-prefixed string (encoding/binary.Uvarint), as the inline format writes them.
fn read_varint_string(b: &[u8]) -> Result<(String, usize), GoError> {
    let mut len: u64 = 0;
    let mut used = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            used = i + 1;
            break;
        }
    }
    let bad = |what: String| GoError::Malformed {
        what: format!(".go.buildinfo: {what}"),
    };
    if used == 0 {
        return Err(bad(
            "unterminated varint length of the version string".into()
        ));
    }
    if len > MAX_VERSION_LEN {
        return Err(bad(format!("version length {len} is implausible")));
    }
    let end = used + len as usize;
    let s = b
        .get(used..end)
        .ok_or_else(|| bad("version string runs past the section".into()))?;
    Ok((String::from_utf8_lossy(s).into_owned(), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        let v = GoVersion::parse("go1.19.8").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 19, 8));
        let v = GoVersion::parse("go1.21rc2").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 21, 0));
        let v = GoVersion::parse("go1.22.0 X:nocoverageredesign").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (1, 22, 0));
        assert!(v.at_least(1, 20) && !v.at_least(1, 23));
        assert_eq!(GoVersion::parse("devel +abc"), None);
        assert_eq!(GoVersion::parse("go"), None);
    }

    #[test]
    fn varint_strings() {
        assert_eq!(
            read_varint_string(b"\x08go1.27.3rest").unwrap(),
            ("go1.27.3".into(), 9)
        );
        assert!(read_varint_string(b"\x09go1.27.3").is_err());
        assert!(read_varint_string(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(read_varint_string(b"\xff\x7f").is_err());
        assert!(read_varint_string(b"").is_err());
    }
}
