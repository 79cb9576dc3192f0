//! [`ShareableList`]: Python's `multiprocessing.shared_memory.ShareableList`, a fixed-length
//! list of ints, floats, bools, `None`, strs and bytes in one named [`SharedMemory`] block,
//! laid out byte for byte as Python lays it out, so that Python and Rust processes attach each
//! other's lists by name.
//!
//! | Python | multiproc |
//! |---|---|
//! | `ShareableList([1, 2.5, "ab"])` | [`ShareableList::new([Item::Int(1), 2.5.into(), "ab".into()])`](ShareableList::new) |
//! | `ShareableList(seq, name="x")` | [`ShareableList::with_name("x", seq)`](ShareableList::with_name) |
//! | `ShareableList(name="x")` | [`ShareableList::attach("x")`](ShareableList::attach) |
//! | `sl[i]`, `sl[i] = v` | [`get(i)`](ShareableList::get), [`set(i, v)`](ShareableList::set) (no negative indexes: write `sl.len() - k`) |
//! | `len(sl)`, `list(sl)`, `iter(sl)` | [`len()`](ShareableList::len), [`to_vec()`](ShareableList::to_vec), [`iter()`](ShareableList::iter) |
//! | `sl.index(v)`, `sl.count(v)` | [`index(&v)`](ShareableList::index), [`count(&v)`](ShareableList::count) (Python's `==`: `1 == 1.0 == True`) |
//! | `sl.format`, `sl.shm`, `sl.shm.name` | [`format()`](ShareableList::format), [`shm()`](ShareableList::shm), [`name()`](ShareableList::name) |
//! | `sl.shm.unlink()` | [`unlink()`](ShareableList::unlink) |
//! | `IndexError`, `ValueError("bytes/str item exceeds available storage")` | [`Error::IndexOutOfRange`], [`Error::ExceedsStorage`] |
//!
//! Layout (native byte order, every offset a multiple of 8): the item count `N` as an `i64`;
//! `N + 1` cumulative slot offsets (`i64`, from the start of the data); the slots (8 bytes for
//! an int, float, bool or `None`, `8 * (len / 8 + 1)` bytes for a str or bytes, fixed at
//! creation); `N` struct format strings of 8 bytes (`q`, `d`, `xxxxxxx?`, `xxxxxx?x`, `16s`…);
//! `N` one-byte codes (0 as is, 1 str, 2 bytes, 3 `None`).
//!
//! Every access copies through [`SharedMemory::read`]/[`SharedMemory::write`]: other processes
//! may change the list at any time, so each [`get`](ShareableList::get) reads the item's current
//! format and code again (and checks them: a corrupt item is an [`Error::InvalidList`], never a
//! panic). As in Python, a [`set`](ShareableList::set) is several copies, not one atomic
//! step: order writers and readers with a lock or an event when they may overlap.
//!
//! ```
//! use multiproc_core::Process;
//! use multiproc_shm::{Item, ShareableList};
//!
//! fn change(name: String) {
//!     let sl = ShareableList::attach(&name).unwrap();
//!     sl.set(0, 2.5).unwrap(); //        an int slot becomes a float
//!     sl.set(2, "hi").unwrap(); //       a shorter str
//! }
//!
//! let sl = ShareableList::new([Item::Int(1), Item::Bool(true), "hello".into(), Item::None])?;
//! assert_eq!(sl.format()?, "qxxxxxxx?8sxxxxxx?x");
//! let mut p = Process::new(change, sl.name().to_string());
//! p.start().unwrap();
//! p.join().unwrap();
//! assert_eq!(sl.to_vec()?, [Item::Float(2.5), Item::Bool(true), "hi".into(), Item::None]);
//! assert_eq!(sl.format()?, "dxxxxxxx?8sxxxxxx?x");
//! sl.unlink()?;
//! # Ok::<(), multiproc_shm::Error>(())
//! ```
//!
//! ```python
//! from multiprocessing import Process, shared_memory
//!
//! def change(name):
//!     sl = shared_memory.ShareableList(name=name)
//!     sl[0] = 2.5
//!     sl[2] = "hi"
//!
//! sl = shared_memory.ShareableList([1, True, "hello", None])
//! p = Process(target=change, args=(sl.shm.name,)); p.start(); p.join()
//! print(list(sl), sl.format)   # [2.5, True, 'hi', None] dxxxxxxx?8sxxxxxx?x
//! sl.shm.close(); sl.shm.unlink()
//! ```

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, SharedMemory};

/// Every offset and slot is a multiple of this (Python's `_alignment`).
const ALIGN: usize = 8;

/// The longest str or bytes (encoded) a list can be created with: its slot's format string
/// (`"9999992s"`) must fit in 8 bytes (Python asserts the same).
pub const MAX_ITEM_LEN: usize = 9_999_991;

/// One value of a [`ShareableList`]: the six types Python's `ShareableList` stores.
///
/// `From` converts the natural Rust types: integers up to 32 bits and `i64` to [`Item::Int`],
/// `f32`/`f64` to [`Item::Float`], `bool`, `&str`/`String` to [`Item::Str`],
/// `&[u8]`/`&[u8; N]`/`Vec<u8>` to [`Item::Bytes`], and `()` or an `Option` that is `None` to
/// [`Item::None`].
///
/// `==` compares variants and values exactly (`Item::Int(1) != Item::Float(1.0)`);
/// [`py_eq`](Item::py_eq) is Python's `==`, used by [`ShareableList::index`] and
/// [`ShareableList::count`]. `Display` writes Python's `repr`.
///
/// ```
/// use multiproc_shm::Item;
///
/// assert_eq!(Item::from("ab"), Item::Str("ab".into()));
/// assert_eq!(Item::from(b"xy"), Item::Bytes(b"xy".to_vec()));
/// assert_eq!(Item::from(None::<i64>), Item::None);
/// assert!(Item::Int(1).py_eq(&Item::Float(1.0)) && Item::Int(1).py_eq(&Item::Bool(true)));
/// assert_eq!(Item::from("it's").to_string(), r#""it's""#);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A Python `int` in the range of an `i64` (format `q`).
    Int(i64),
    /// A Python `float` (format `d`).
    Float(f64),
    /// A Python `bool` (format `xxxxxxx?`).
    Bool(bool),
    /// Python's `None` (format `xxxxxx?x`).
    None,
    /// A Python `str`, stored as UTF-8 (format `<size>s`). Trailing NULs are not kept.
    Str(String),
    /// A Python `bytes` (format `<size>s`). Trailing NULs are not kept.
    Bytes(Vec<u8>),
}

impl Item {
    /// The integer, if this is an [`Item::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match *self {
            Item::Int(v) => Some(v),
            _ => None,
        }
    }

    /// The float, if this is an [`Item::Float`].
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            Item::Float(v) => Some(v),
            _ => None,
        }
    }

    /// The bool, if this is an [`Item::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Item::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is an [`Item::Str`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is an [`Item::Bytes`].
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Item::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Whether this is [`Item::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Item::None)
    }

    /// Python's `==`: ints, floats and bools compare by numeric value (`1 == 1.0 == True`,
    /// exactly, and NaN equals nothing), `None` equals `None`, a str equals an equal str and
    /// bytes equal bytes (a str never equals bytes).
    pub fn py_eq(&self, other: &Item) -> bool {
        match (self.number(), other.number()) {
            (Some(a), Some(b)) => a.eq_number(b),
            (None, None) => match (self, other) {
                (Item::None, Item::None) => true,
                (Item::Str(a), Item::Str(b)) => a == b,
                (Item::Bytes(a), Item::Bytes(b)) => a == b,
                _ => false,
            },
            _ => false,
        }
    }

    fn number(&self) -> Option<Number> {
        match *self {
            Item::Int(v) => Some(Number::Int(v)),
            Item::Bool(v) => Some(Number::Int(i64::from(v))),
            Item::Float(v) => Some(Number::Float(v)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn eq_number(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (Number::Float(a), Number::Float(b)) => a == b,
            (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
                // Exact, as Python compares int and float: only a float with an integral
                // value inside i64's range can equal an i64.
                f.fract() == 0.0
                    && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
                    && f as i64 == i
            }
        }
    }
}

/// Python's `repr`.
impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Int(v) => write!(f, "{v}"),
            Item::Float(v) if v.is_nan() => f.write_str("nan"),
            Item::Float(v) if v.is_infinite() => f.write_str(if *v > 0.0 { "inf" } else { "-inf" }),
            Item::Float(v) => write!(f, "{v:?}"),
            Item::Bool(true) => f.write_str("True"),
            Item::Bool(false) => f.write_str("False"),
            Item::None => f.write_str("None"),
            Item::Str(s) => python_quoted(f, "", s.chars()),
            Item::Bytes(b) => python_quoted(f, "b", b.iter().map(|&c| char::from(c))),
        }
    }
}

/// Python's quoting in `repr`: single quotes unless the text holds `'` and no `"`; `\\`, the
/// quote, `\n`, `\r`, `\t` escaped, other control characters (and, for bytes, every byte
/// above 0x7e) as `\xNN`/`\uNNNN`.
fn python_quoted(
    f: &mut fmt::Formatter<'_>,
    prefix: &str,
    text: impl Iterator<Item = char> + Clone,
) -> fmt::Result {
    let bytes = !prefix.is_empty();
    let (mut single, mut double) = (false, false);
    for c in text.clone() {
        single |= c == '\'';
        double |= c == '"';
    }
    let quote = if single && !double { '"' } else { '\'' };
    write!(f, "{prefix}{quote}")?;
    for c in text {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if c == quote => write!(f, "\\{c}")?,
            c if bytes && !(' '..='~').contains(&c) => write!(f, "\\x{:02x}", u32::from(c))?,
            c if c.is_control() && u32::from(c) < 0x100 => write!(f, "\\x{:02x}", u32::from(c))?,
            c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
            c => write!(f, "{c}")?,
        }
    }
    write!(f, "{quote}")
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Item {
            fn from(v: $t) -> Item {
                Item::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Item {
    fn from(v: f64) -> Item {
        Item::Float(v)
    }
}

impl From<f32> for Item {
    fn from(v: f32) -> Item {
        Item::Float(f64::from(v))
    }
}

impl From<bool> for Item {
    fn from(v: bool) -> Item {
        Item::Bool(v)
    }
}

impl From<()> for Item {
    fn from((): ()) -> Item {
        Item::None
    }
}

impl From<&str> for Item {
    fn from(v: &str) -> Item {
        Item::Str(v.to_string())
    }
}

impl From<String> for Item {
    fn from(v: String) -> Item {
        Item::Str(v)
    }
}

impl From<&String> for Item {
    fn from(v: &String) -> Item {
        Item::Str(v.clone())
    }
}

impl From<&[u8]> for Item {
    fn from(v: &[u8]) -> Item {
        Item::Bytes(v.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Item {
    fn from(v: &[u8; N]) -> Item {
        Item::Bytes(v.to_vec())
    }
}

impl From<Vec<u8>> for Item {
    fn from(v: Vec<u8>) -> Item {
        Item::Bytes(v)
    }
}

impl<T: Into<Item>> From<Option<T>> for Item {
    fn from(v: Option<T>) -> Item {
        v.map_or(Item::None, Into::into)
    }
}

/// The struct format of one slot (Python's `_types_mapping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// `q`
    Int,
    /// `d`
    Float,
    /// `xxxxxxx?`
    Bool,
    /// `xxxxxx?x`
    None,
    /// `<n>s`
    Bytes(usize),
}

impl Format {
    /// Parses a stored 8-byte format (trailing NULs stripped, as Python does).
    fn parse(raw: &[u8]) -> Option<Format> {
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        match &raw[..end] {
            b"q" => Some(Format::Int),
            b"d" => Some(Format::Float),
            b"xxxxxxx?" => Some(Format::Bool),
            b"xxxxxx?x" => Some(Format::None),
            [digits @ .., b's'] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
                // At most 7 digits: no overflow.
                let n = digits
                    .iter()
                    .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
                Some(Format::Bytes(n))
            }
            _ => None,
        }
    }

    fn text(self) -> String {
        match self {
            Format::Int => "q".into(),
            Format::Float => "d".into(),
            Format::Bool => "xxxxxxx?".into(),
            Format::None => "xxxxxx?x".into(),
            Format::Bytes(n) => format!("{n}s"),
        }
    }

    /// The format as stored: 8 bytes, NUL-padded.
    fn stored(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let text = self.text();
        out[..text.len()].copy_from_slice(text.as_bytes());
        out
    }

    /// How many bytes of its slot it reads.
    fn width(self) -> usize {
        match self {
            Format::Bytes(n) => n,
            _ => ALIGN,
        }
    }
}

/// Python's back-transform codes.
const CODE_AS_IS: u8 = 0;
const CODE_STR: u8 = 1;
const CODE_BYTES: u8 = 2;
const CODE_NONE: u8 = 3;

/// An item as stored: its format, its code and the bytes of its slot (`format.width()` long).
fn encode_item(item: &Item, slot: usize) -> Result<(Format, u8, Vec<u8>), usize> {
    let word = |last: usize, v: bool| {
        let mut w = vec![0u8; ALIGN];
        w[last] = u8::from(v);
        w
    };
    Ok(match item {
        Item::Int(v) => (Format::Int, CODE_AS_IS, v.to_ne_bytes().to_vec()),
        Item::Float(v) => (Format::Float, CODE_AS_IS, v.to_ne_bytes().to_vec()),
        Item::Bool(v) => (Format::Bool, CODE_AS_IS, word(7, *v)),
        // struct packs None for `?` as False.
        Item::None => (Format::None, CODE_NONE, word(6, false)),
        Item::Str(s) => padded(s.as_bytes(), slot, CODE_STR)?,
        Item::Bytes(b) => padded(b, slot, CODE_BYTES)?,
    })
}

/// A str or bytes in a slot of `slot` bytes, NUL-padded as `struct.pack("<slot>s")` pads;
/// `Err(slot)` if it does not fit.
fn padded(data: &[u8], slot: usize, code: u8) -> Result<(Format, u8, Vec<u8>), usize> {
    if data.len() > slot {
        return Err(slot);
    }
    let mut bytes = vec![0u8; slot];
    bytes[..data.len()].copy_from_slice(data);
    Ok((Format::Bytes(slot), code, bytes))
}

/// The item that `unpack(format)` then the back transform `code` give in Python; the error
/// says why Python would have failed.
fn decode_item(format: Format, code: u8, data: &[u8]) -> Result<Item, String> {
    let word = |data: &[u8]| -> [u8; 8] { data[..8].try_into().unwrap_or([0; 8]) };
    let value = match format {
        Format::Int => Item::Int(i64::from_ne_bytes(word(data))),
        Format::Float => Item::Float(f64::from_ne_bytes(word(data))),
        Format::Bool => Item::Bool(data[7] != 0),
        Format::None => Item::Bool(data[6] != 0),
        Format::Bytes(n) => Item::Bytes(data[..n].to_vec()),
    };
    let strip = |mut b: Vec<u8>| {
        let end = b.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
        b.truncate(end);
        b
    };
    match (code, value) {
        (CODE_AS_IS, value) => Ok(value),
        (CODE_NONE, _) => Ok(Item::None),
        (CODE_BYTES, Item::Bytes(b)) => Ok(Item::Bytes(strip(b))),
        (CODE_STR, Item::Bytes(b)) => String::from_utf8(strip(b))
            .map(Item::Str)
            .map_err(|_| "a str item is not valid UTF-8".to_string()),
        (CODE_STR | CODE_BYTES, _) => Err(format!(
            "a str or bytes code with the format {:?}",
            format.text()
        )),
        (code, _) => Err(format!("unknown type code {code}")),
    }
}

/// Where everything of a list lies (Python's `_allocated_offsets` and `_offset_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    /// `N + 1` cumulative slot offsets from the start of the data; `offsets[0] == 0`.
    offsets: Vec<usize>,
}

impl Layout {
    /// The layout Python computes for these items at creation.
    fn for_items(items: &[Item]) -> Result<Layout, Error> {
        let mut offsets = Vec::with_capacity(items.len() + 1);
        offsets.push(0);
        let mut end = 0usize;
        for (index, item) in items.iter().enumerate() {
            let slot = match item {
                Item::Str(s) => Self::slot_for(index, s.len())?,
                Item::Bytes(b) => Self::slot_for(index, b.len())?,
                _ => ALIGN,
            };
            end = end.checked_add(slot).ok_or(Error::InvalidSize)?;
            offsets.push(end);
        }
        Ok(Layout { offsets })
    }

    /// `8 * (len // 8 + 1)`, if its format fits in 8 bytes.
    fn slot_for(index: usize, len: usize) -> Result<usize, Error> {
        if len > MAX_ITEM_LEN {
            return Err(Error::ExceedsStorage {
                index,
                len,
                available: MAX_ITEM_LEN,
            });
        }
        Ok(ALIGN * (len / ALIGN + 1))
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Python's `_offset_data_start`.
    fn data_start(&self) -> usize {
        (self.len() + 2) * ALIGN
    }

    /// Where slot `i` starts in the block, and its size.
    fn slot(&self, i: usize) -> (usize, usize) {
        (
            self.data_start() + self.offsets[i],
            self.offsets[i + 1] - self.offsets[i],
        )
    }

    /// Python's `_offset_packing_formats`.
    fn formats_start(&self) -> usize {
        self.data_start() + self.offsets[self.len()]
    }

    /// Python's `_offset_back_transform_codes`.
    fn codes_start(&self) -> usize {
        self.formats_start() + self.len() * ALIGN
    }

    /// The bytes the list occupies (Python's `requested_size`).
    fn size(&self) -> usize {
        self.codes_start() + self.len()
    }

    /// The whole block's content for these items, as Python's `__init__` packs it.
    fn image(&self, items: &[Item]) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; self.size()];
        let mut put = |at: usize, bytes: &[u8]| out[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &(self.len() as i64).to_ne_bytes());
        for (i, &off) in self.offsets.iter().enumerate() {
            put(ALIGN * (i + 1), &(off as i64).to_ne_bytes());
        }
        for (i, item) in items.iter().enumerate() {
            let (at, slot) = self.slot(i);
            let (format, code, bytes) =
                encode_item(item, slot).map_err(|available| Error::ExceedsStorage {
                    index: i,
                    len: bytes_len(item),
                    available,
                })?;
            put(at, &bytes);
            put(self.formats_start() + ALIGN * i, &format.stored());
            put(self.codes_start() + i, &[code]);
        }
        Ok(out)
    }

    /// Reads and checks the header of a block of `size` bytes: the count, the offsets (from
    /// 0, each slot a positive multiple of 8), and that everything fits. `Err` says why not.
    fn read(shm: &SharedMemory) -> Result<Layout, String> {
        let size = shm.size();
        let io = |e: Error| e.to_string();
        let empty = 2 * ALIGN;
        if size < empty {
            return Err(format!(
                "{size} bytes are fewer than an empty list's {empty}"
            ));
        }
        let mut word = [0u8; 8];
        shm.read(0, &mut word).map_err(io)?;
        let count = i64::from_ne_bytes(word);
        // Each item takes at least 8 (offset) + 8 (slot) + 8 (format) + 1 (code) bytes.
        let max = (size - empty) / (3 * ALIGN + 1);
        let n = match usize::try_from(count) {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "an item count of {count} does not fit in {size} bytes"
                ));
            }
        };
        let mut raw = vec![0u8; ALIGN * (n + 1)];
        shm.read(ALIGN, &mut raw).map_err(io)?;
        let mut offsets = Vec::with_capacity(n + 1);
        for (i, chunk) in raw.chunks_exact(ALIGN).enumerate() {
            let off = i64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
            let prev = offsets.last().copied();
            let valid = usize::try_from(off).ok().filter(|&o| match prev {
                None => o == 0,
                Some(p) => o > p && (o - p) % ALIGN == 0 && o <= size,
            });
            let Some(off) = valid else {
                return Err(match prev {
                    None => format!("offset 0 is {off}, not 0"),
                    Some(p) => format!(
                        "offset {i} is {off}: not a multiple of 8 above offset {} ({p}) within the block",
                        i - 1
                    ),
                });
            };
            offsets.push(off);
        }
        let layout = Layout { offsets };
        if layout.size() > size {
            return Err(format!(
                "its layout needs {} bytes, the block has {size}",
                layout.size()
            ));
        }
        // The formats and codes change with every `set`, but must be sane now too.
        let mut meta = vec![0u8; (ALIGN + 1) * n];
        shm.read(layout.formats_start(), &mut meta).map_err(io)?;
        let (formats, codes) = meta.split_at(ALIGN * n);
        for (i, (raw, &code)) in formats.chunks_exact(ALIGN).zip(codes).enumerate() {
            layout.check_format(i, raw)?;
            if code > CODE_NONE {
                return Err(format!("item {i}: unknown type code {code}"));
            }
        }
        Ok(layout)
    }

    /// The format of item `i` from its stored bytes, if valid and inside its slot.
    fn check_format(&self, i: usize, raw: &[u8]) -> Result<Format, String> {
        let format = Format::parse(raw).ok_or_else(|| {
            format!(
                "item {i}: invalid format {:?}",
                raw.escape_ascii().to_string()
            )
        })?;
        let (_, slot) = self.slot(i);
        if format.width() > slot {
            return Err(format!(
                "item {i}: format {:?} does not fit its slot of {slot} bytes",
                format.text()
            ));
        }
        Ok(format)
    }
}

fn bytes_len(item: &Item) -> usize {
    match item {
        Item::Str(s) => s.len(),
        Item::Bytes(b) => b.len(),
        _ => ALIGN,
    }
}

/// Python's `multiprocessing.shared_memory.ShareableList`: a fixed-length list of [`Item`]s in
/// a named [`SharedMemory`] block, in Python's exact layout (see the [module](self) docs).
///
/// Indexes are `usize`; Python's negative indexes are not supported (`sl[-1]` is
/// `sl.get(sl.len() - 1)`). An index at or past [`len`](Self::len) is
/// [`Error::IndexOutOfRange`] (Python's `IndexError`).
///
/// A str or bytes slot keeps the size it was created with (`8 * (len / 8 + 1)` bytes): a
/// longer value is [`Error::ExceedsStorage`] (Python's `ValueError("bytes/str item exceeds
/// available storage")`). Any slot may change type when the new value fits: an int, float,
/// bool or `None` needs 8 bytes, so it fits everywhere; the format string follows.
///
/// Handed to a child (serde), the list travels as its [`SharedMemory`] does (fd and name; the
/// child attaches the same block), as Python pickles it by name.
///
/// ```
/// use multiproc_shm::{Error, Item, ShareableList};
///
/// let sl = ShareableList::new(["howdy".into(), Item::from(b"HoWdY"), Item::Int(-273)])?;
/// let same = ShareableList::attach(sl.name())?;
/// same.set(2, 42)?;
/// assert_eq!(sl.get(2)?, Item::Int(42));
/// assert!(matches!(sl.set(0, "more than eight"), Err(Error::ExceedsStorage { .. })));
/// assert!(matches!(sl.get(3), Err(Error::IndexOutOfRange { index: 3, len: 3 })));
/// sl.unlink()?;
/// # Ok::<(), multiproc_shm::Error>(())
/// ```
pub struct ShareableList {
    shm: SharedMemory,
    layout: Layout,
}

impl ShareableList {
    /// Creates a list of these items in a new block with a generated `psm_…` name (Python's
    /// `ShareableList(sequence)`), tracked as [`SharedMemory::create`] tracks it: removed when
    /// this process ends unless unlinked before.
    ///
    /// Errors: [`Error::ExceedsStorage`] for a str or bytes longer than [`MAX_ITEM_LEN`],
    /// and those of [`SharedMemory::create`].
    pub fn new(items: impl IntoIterator<Item = impl Into<Item>>) -> Result<ShareableList, Error> {
        Self::create(None, items)
    }

    /// Like [`new`](Self::new), in a block named `name` (Python's `ShareableList(sequence,
    /// name=name)`); [`Error::Exists`] if the name is taken.
    pub fn with_name(
        name: &str,
        items: impl IntoIterator<Item = impl Into<Item>>,
    ) -> Result<ShareableList, Error> {
        Self::create(Some(name), items)
    }

    fn create(
        name: Option<&str>,
        items: impl IntoIterator<Item = impl Into<Item>>,
    ) -> Result<ShareableList, Error> {
        let items: Vec<Item> = items.into_iter().map(Into::into).collect();
        let layout = Layout::for_items(&items)?;
        let image = layout.image(&items)?;
        let shm = SharedMemory::create(name, image.len())?;
        shm.write(0, &image)?;
        Ok(ShareableList { shm, layout })
    }

    /// Attaches to the list in the block `name`, made by Rust or by Python (Python's
    /// `ShareableList(name=name)`), after checking its header.
    ///
    /// Errors: those of [`SharedMemory::attach`] ([`Error::NotFound`] …), and
    /// [`Error::InvalidList`] if the block does not hold a list: too small, a negative or
    /// impossible count, offsets that do not start at 0 or do not grow by multiples of 8,
    /// a layout larger than the block, a format that is not one Python writes or does not fit
    /// its slot, or an unknown type code.
    pub fn attach(name: &str) -> Result<ShareableList, Error> {
        Self::from_shared_memory(SharedMemory::attach(name)?)
    }

    /// The list in a block already open, checked as [`attach`](Self::attach) checks it.
    pub fn from_shared_memory(shm: SharedMemory) -> Result<ShareableList, Error> {
        match Layout::read(&shm) {
            Ok(layout) => Ok(ShareableList { shm, layout }),
            Err(reason) => Err(Error::InvalidList {
                name: shm.name().to_string(),
                reason,
            }),
        }
    }

    /// Another handle on the same list (see [`SharedMemory::try_clone`]), to hand to a child
    /// while keeping this one.
    pub fn try_clone(&self) -> Result<ShareableList, Error> {
        Ok(ShareableList {
            shm: self.shm.try_clone()?,
            layout: self.layout.clone(),
        })
    }

    /// The number of items (fixed at creation; Python's `len(sl)`).
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_index(&self, index: usize) -> Result<(), Error> {
        if index >= self.len() {
            return Err(Error::IndexOutOfRange {
                index,
                len: self.len(),
            });
        }
        Ok(())
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidList {
            name: self.shm.name().to_string(),
            reason,
        }
    }

    /// Item `index` (Python's `sl[index]`), read now: its format, type code and bytes as
    /// stored at this moment. A str or bytes loses its trailing NULs, as in Python.
    ///
    /// Errors: [`Error::IndexOutOfRange`]; [`Error::InvalidList`] if another process left the
    /// item corrupt (an invalid format or code, a str that is not UTF-8).
    pub fn get(&self, index: usize) -> Result<Item, Error> {
        self.check_index(index)?;
        let mut raw = [0u8; ALIGN];
        self.shm
            .read(self.layout.formats_start() + ALIGN * index, &mut raw)?;
        let mut code = [0u8];
        self.shm
            .read(self.layout.codes_start() + index, &mut code)?;
        let format = self
            .layout
            .check_format(index, &raw)
            .map_err(|r| self.invalid(r))?;
        let (at, _) = self.layout.slot(index);
        let mut data = vec![0u8; format.width().max(ALIGN)];
        self.shm.read(at, &mut data)?;
        decode_item(format, code[0], &data).map_err(|r| self.invalid(format!("item {index}: {r}")))
    }

    /// Stores `item` at `index` (Python's `sl[index] = item`), with its format and type code.
    ///
    /// An int, float, bool or `None` fits any slot. A str (UTF-8) or bytes fits if it is no
    /// longer than the slot's size, fixed at creation; it is stored NUL-padded to the slot's
    /// size, so trailing NULs of the value are lost, as in Python.
    ///
    /// Errors: [`Error::IndexOutOfRange`]; [`Error::ExceedsStorage`] for a str or bytes longer
    /// than the slot (nothing is written).
    pub fn set(&self, index: usize, item: impl Into<Item>) -> Result<(), Error> {
        self.check_index(index)?;
        let item = item.into();
        let (at, slot) = self.layout.slot(index);
        // Python keeps a str slot's current `<n>s` format, which is `<slot>s` in every list
        // Python or this type makes; writing `<slot>s` always never truncates silently.
        let (format, code, bytes) =
            encode_item(&item, slot).map_err(|available| Error::ExceedsStorage {
                index,
                len: bytes_len(&item),
                available,
            })?;
        // Python's order: format, code, then the value.
        self.shm.write(
            self.layout.formats_start() + ALIGN * index,
            &format.stored(),
        )?;
        self.shm.write(self.layout.codes_start() + index, &[code])?;
        self.shm.write(at, &bytes)
    }

    /// Every item, from one copy of the block (Python's `list(sl)`).
    ///
    /// Errors: [`Error::InvalidList`] as for [`get`](Self::get).
    pub fn to_vec(&self) -> Result<Vec<Item>, Error> {
        let base = self.layout.data_start();
        let mut block = vec![0u8; self.layout.size() - base];
        self.shm.read(base, &mut block)?;
        let (formats, codes) =
            block[self.layout.formats_start() - base..].split_at(ALIGN * self.len());
        (0..self.len())
            .map(|i| {
                let format = self
                    .layout
                    .check_format(i, &formats[ALIGN * i..ALIGN * (i + 1)])
                    .map_err(|r| self.invalid(r))?;
                let (at, _) = self.layout.slot(i);
                decode_item(format, codes[i], &block[at - base..])
                    .map_err(|r| self.invalid(format!("item {i}: {r}")))
            })
            .collect()
    }

    /// The items one by one, each read when reached (Python's `iter(sl)`).
    pub fn iter(&self) -> impl Iterator<Item = Result<Item, Error>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The index of the first item equal to `item` by Python's `==` ([`Item::py_eq`]; Python's
    /// `sl.index(item)`).
    ///
    /// Errors: [`Error::NotInList`] (Python's `ValueError`), or those of
    /// [`to_vec`](Self::to_vec).
    pub fn index(&self, item: &Item) -> Result<usize, Error> {
        self.to_vec()?
            .iter()
            .position(|x| item.py_eq(x))
            .ok_or_else(|| Error::NotInList(item.clone()))
    }

    /// How many items equal `item` by Python's `==` ([`Item::py_eq`]; Python's
    /// `sl.count(item)`).
    ///
    /// Errors: those of [`to_vec`](Self::to_vec).
    pub fn count(&self, item: &Item) -> Result<usize, Error> {
        Ok(self.to_vec()?.iter().filter(|x| item.py_eq(x)).count())
    }

    /// The struct format of every item as stored now, concatenated (Python's `sl.format`),
    /// e.g. `"qd8s8sxxxxxx?xxxxxxxx?"`.
    ///
    /// Errors: [`Error::InvalidList`] if a stored format is not valid.
    pub fn format(&self) -> Result<String, Error> {
        let mut raw = vec![0u8; ALIGN * self.len()];
        self.shm.read(self.layout.formats_start(), &mut raw)?;
        raw.chunks_exact(ALIGN)
            .enumerate()
            .map(|(i, f)| {
                self.layout
                    .check_format(i, f)
                    .map(Format::text)
                    .map_err(|r| self.invalid(r))
            })
            .collect()
    }

    /// The block's name, without the leading `/` (Python's `sl.shm.name`).
    pub fn name(&self) -> &str {
        self.shm.name()
    }

    /// The block (Python's `sl.shm`). Its [`size`](SharedMemory::size) may exceed the list's
    /// own size where the OS rounds it up; the list uses only what its layout says.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// Removes the block's name (Python's `sl.shm.unlink()`); see [`SharedMemory::unlink`].
    pub fn unlink(&self) -> Result<(), Error> {
        self.shm.unlink()
    }
}

impl fmt::Debug for ShareableList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareableList")
            .field("name", &self.shm.name())
            .field("len", &self.len())
            .finish()
    }
}

/// As its [`SharedMemory`] (fd and name).
impl Serialize for ShareableList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.shm.serialize(s)
    }
}

/// Maps the block received and checks it as [`ShareableList::attach`] does.
impl<'de> Deserialize<'de> for ShareableList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let shm = SharedMemory::deserialize(d)?;
        ShareableList::from_shared_memory(shm).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Vec<Item> {
        vec![
            Item::Int(1),
            Item::Float(2.5),
            "ab".into(),
            b"xy".into(),
            Item::None,
            Item::Bool(true),
        ]
    }

    /// PYTHON-REFERENCE §2.5's verified example:
    /// `ShareableList([1, 2.5, "ab", b"xy", None, True])`.
    #[test]
    fn python_verified_example_layout() {
        let items = example();
        let layout = Layout::for_items(&items).unwrap();
        assert_eq!(layout.offsets, [0, 8, 16, 24, 32, 40, 48]);
        assert_eq!(layout.size(), 166);
        assert_eq!(layout.data_start(), 64);
        assert_eq!(layout.formats_start(), 112);
        assert_eq!(layout.codes_start(), 160);
        let image = layout.image(&items).unwrap();
        assert_eq!(image.len(), 166);
        assert_eq!(image[..8], [6, 0, 0, 0, 0, 0, 0, 0]);
        let formats: String = image[112..160]
            .chunks(8)
            .map(|f| Format::parse(f).unwrap().text())
            .collect();
        assert_eq!(formats, "qd8s8sxxxxxx?xxxxxxxx?");
        assert_eq!(image[160..], [0, 0, 1, 2, 3, 0]);
        // The slots: 1, 2.5, "ab" and b"xy" NUL-padded, None (all zero), True in byte 7.
        assert_eq!(image[64..72], 1i64.to_ne_bytes());
        assert_eq!(image[72..80], 2.5f64.to_ne_bytes());
        assert_eq!(&image[80..88], b"ab\0\0\0\0\0\0");
        assert_eq!(&image[88..96], b"xy\0\0\0\0\0\0");
        assert_eq!(image[96..104], [0; 8]);
        assert_eq!(image[104..112], [0, 0, 0, 0, 0, 0, 0, 1]);
        // Offsets as stored.
        assert_eq!(image[8 + 6 * 8..64], 48i64.to_ne_bytes());
    }

    #[test]
    fn str_slots_are_a_multiple_of_8_beyond_the_length() {
        for (len, slot) in [(0, 8), (1, 8), (7, 8), (8, 16), (15, 16), (16, 24)] {
            let layout =
                Layout::for_items(&[Item::Str("é".repeat(len / 2) + &"a".repeat(len % 2))])
                    .unwrap();
            assert_eq!(layout.slot(0), (24, slot), "len {len}");
            assert_eq!(layout.size(), 24 + slot + 9);
        }
        let empty = Layout::for_items(&[]).unwrap();
        assert_eq!((empty.size(), empty.data_start()), (16, 16));
        assert!(matches!(
            Layout::for_items(&[Item::Bytes(vec![1; MAX_ITEM_LEN + 1])]),
            Err(Error::ExceedsStorage { index: 0, len, available: MAX_ITEM_LEN }) if len == MAX_ITEM_LEN + 1
        ));
        assert_eq!(
            Layout::slot_for(0, MAX_ITEM_LEN).unwrap(),
            9_999_992,
            "the largest slot's format has 8 characters"
        );
    }

    #[test]
    fn formats_parse_as_python_writes_them() {
        for f in [
            Format::Int,
            Format::Float,
            Format::Bool,
            Format::None,
            Format::Bytes(8),
            Format::Bytes(9_999_992),
        ] {
            assert_eq!(Format::parse(&f.stored()), Some(f));
        }
        for bad in [
            &b"\0\0\0\0\0\0\0\0"[..],
            b"s\0\0\0\0\0\0\0",
            b"Q",
            b"q\0d",
            b"-8s",
            b"8 s",
            b"xxxxxxxx",
        ] {
            assert_eq!(Format::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn decode_follows_python_unpack_then_transform() {
        let word = |b: u8, at: usize| {
            let mut w = [0u8; 8];
            w[at] = b;
            w
        };
        assert_eq!(
            decode_item(Format::Bool, 0, &word(5, 7)),
            Ok(Item::Bool(true))
        );
        assert_eq!(
            decode_item(Format::Bool, 0, &word(0, 6)),
            Ok(Item::Bool(false))
        );
        assert_eq!(decode_item(Format::Int, 3, &word(1, 0)), Ok(Item::None));
        assert_eq!(
            decode_item(Format::Bytes(8), 1, b"h\xc3\xa9\0\0\0\0\0"),
            Ok(Item::Str("hé".into()))
        );
        assert_eq!(
            decode_item(Format::Bytes(8), 2, b"a\0b\0\0\0\0\0"),
            Ok(Item::Bytes(b"a\0b".to_vec()))
        );
        assert!(decode_item(Format::Bytes(8), 1, b"\xff\0\0\0\0\0\0\0").is_err());
        assert!(decode_item(Format::Int, 1, &[0; 8]).is_err());
        assert!(decode_item(Format::Int, 4, &[0; 8]).is_err());
    }

    #[test]
    fn encode_pads_and_refuses_longer_values() {
        assert_eq!(
            encode_item(&Item::Str("abc".into()), 16),
            Ok((
                Format::Bytes(16),
                1,
                b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()
            ))
        );
        assert_eq!(encode_item(&Item::Bytes(vec![7; 8]), 8).map(|e| e.1), Ok(2));
        assert_eq!(encode_item(&Item::Bytes(vec![7; 9]), 8), Err(8));
        assert_eq!(
            encode_item(&Item::None, 8),
            Ok((Format::None, 3, vec![0; 8]))
        );
    }

    #[test]
    fn python_equality() {
        let one = [Item::Int(1), Item::Float(1.0), Item::Bool(true)];
        for a in &one {
            for b in &one {
                assert!(a.py_eq(b), "{a} == {b}");
            }
        }
        assert!(!Item::Int(1).py_eq(&Item::Float(1.5)));
        assert!(!Item::Float(f64::NAN).py_eq(&Item::Float(f64::NAN)));
        assert!(!Item::Int(i64::MAX).py_eq(&Item::Float(9_223_372_036_854_775_808.0)));
        assert!(Item::Int(i64::MIN).py_eq(&Item::Float(-9_223_372_036_854_775_808.0)));
        assert!(!Item::Str("a".into()).py_eq(&Item::Bytes(b"a".to_vec())));
        assert!(Item::None.py_eq(&Item::None) && !Item::None.py_eq(&Item::Int(0)));
        assert!(!Item::Bool(false).py_eq(&Item::None));
    }

    #[test]
    fn display_is_python_repr() {
        let shown: Vec<String> = [
            Item::Int(-3),
            Item::Float(2.0),
            Item::Float(f64::NEG_INFINITY),
            Item::Bool(false),
            Item::None,
            "a'b\"c".into(),
            "x\n".into(),
            b"\x00z".into(),
        ]
        .iter()
        .map(Item::to_string)
        .collect();
        assert_eq!(
            shown,
            [
                "-3",
                "2.0",
                "-inf",
                "False",
                "None",
                r#"'a\'b"c'"#,
                r"'x\n'",
                r"b'\x00z'",
            ]
        );
    }
}
