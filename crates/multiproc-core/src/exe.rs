//! Which executable this is: the range of the main image (for fn offsets) and its identity
//! (so a spawned child can refuse to run if it is not the parent's binary).

use std::ops::Range;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Identity of `/proc/self/exe`: device, inode, size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct ExeId {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: i64,
    mtime_nsec: i64,
}

impl ExeId {
    /// Stats `/proc/self/exe` (the running inode, even if the file was replaced since).
    pub(crate) fn current() -> Result<ExeId, String> {
        let st = rustix::fs::stat("/proc/self/exe")
            .map_err(|e| format!("cannot stat /proc/self/exe: {e}"))?;
        Ok(ExeId {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as i64,
        })
    }
}

impl ExeId {
    /// An identity no executable has, for tests of the refusal.
    #[cfg(test)]
    pub(crate) fn other_for_tests() -> ExeId {
        ExeId {
            dev: u64::MAX,
            ino: 1,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
        }
    }
}

struct Image {
    range: Range<usize>,
    id: ExeId,
}

fn image() -> Result<&'static Image, String> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE.get_or_init(find_image).as_ref().map_err(Clone::clone)
}

/// The address range of the executable image that holds this crate's code.
pub(crate) fn image_range() -> Result<Range<usize>, String> {
    image().map(|i| i.range.clone())
}

/// Whether `addr` lies in an executable segment of the image that holds this crate's code:
/// where a function of this program can be (a checked function reference must point there).
///
/// From the dynamic loader's table of program headers (`dl_iterate_phdr`), so a spawned child
/// checks its job's function reference without reading `/proc/self/maps` (which costs ~30 µs).
pub(crate) fn is_code(addr: usize) -> Result<bool, String> {
    static CODE: OnceLock<Vec<Range<usize>>> = OnceLock::new();
    let code = CODE.get_or_init(|| {
        crate::sys::code_ranges_of_object_containing(crate::sys::fnptr::anchor_code())
    });
    if code.is_empty() {
        return Err("the code of multiproc-core is in no object the dynamic loader knows".into());
    }
    Ok(code.iter().any(|r| r.contains(&addr)))
}

/// The identity of this process's `/proc/self/exe`, read once.
pub(crate) fn current_id() -> Result<ExeId, String> {
    static ID: OnceLock<Result<ExeId, String>> = OnceLock::new();
    ID.get_or_init(ExeId::current).clone()
}

/// The identity of the parent's executable, to send to a spawned child.
pub(crate) fn parent_exe_id() -> Result<ExeId, String> {
    image().map(|i| i.id)
}

/// Finds the mappings of the file that holds the anchor in `/proc/self/maps`, and checks that
/// this file is `/proc/self/exe`. It is not when the program was started through the dynamic
/// loader (`ld-linux.so ./app`), inside another program (a cdylib loaded by Python), or under an
/// emulator: re-executing `/proc/self/exe` would then run something else.
fn find_image() -> Result<Image, String> {
    let anchor = crate::sys::fnptr::anchor();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    let parsed: Vec<Mapping<'_>> = maps.lines().filter_map(parse_line).collect();
    let ours = parsed
        .iter()
        .find(|m| m.range.contains(&anchor))
        .ok_or("the code of multiproc-core is in no mapping of /proc/self/maps")?;
    let same_file = |m: &&Mapping<'_>| m.dev == ours.dev && m.ino == ours.ino;
    let start = parsed.iter().filter(same_file).map(|m| m.range.start).min();
    let end = parsed.iter().filter(same_file).map(|m| m.range.end).max();
    let id = ExeId::current()?;
    let (major, minor) = (rustix::fs::major(id.dev), rustix::fs::minor(id.dev));
    let same_inode = ours.ino == id.ino && ours.dev == format!("{major:02x}:{minor:02x}");
    // Overlay filesystems may show the lower layer's device in the maps; the path then agrees.
    let exe_path = std::fs::read_link("/proc/self/exe").ok();
    let same_path = exe_path.is_some_and(|p| p.as_os_str() == ours.path);
    if ours.ino == 0 || !(same_inode || same_path) {
        return Err("this program's code is not in /proc/self/exe (started through the dynamic loader, \
                    loaded as a library into another program, or emulated): the spawn and forkserver \
                    start methods cannot re-execute it; use the fork start method"
            .into());
    }
    Ok(Image {
        range: start.unwrap_or(0)..end.unwrap_or(0),
        id,
    })
}

/// One line of `/proc/self/maps`.
struct Mapping<'a> {
    range: Range<usize>,
    dev: &'a str,
    ino: u64,
    path: &'a str,
}

/// Parses `start-end perms offset dev inode path`.
fn parse_line(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
    let _perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let ino = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start();
    Some(Mapping {
        range,
        dev,
        ino,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_holds_this_code() {
        let r = image_range().unwrap();
        assert!(r.contains(&(image_holds_this_code as fn() as usize)));
        assert_eq!(parent_exe_id().unwrap(), ExeId::current().unwrap());
        assert!(is_code(image_holds_this_code as fn() as usize).unwrap());
        let data: &'static u8 = &7;
        assert!(!is_code(data as *const u8 as usize).unwrap());
    }
}
