//! A serde `Serializer` that writes postcard's wire format straight into a `Vec<u8>`.
//!
//! Byte for byte what `postcard::to_allocvec` writes (the tests compare the two over every
//! kind of value), but every method is inlined into the caller's loop and a varint is written
//! with one length check: postcard's own serializer costs 6–8 ns per `u64` of a sequence (an
//! out-of-line call per element, the `Vec`'s length stored to memory per byte), this one about
//! a third of that. The pool encodes its task arguments and results with it; everything is
//! decoded by postcard.
//!
//! postcard's format (1.x, stable): unsigned integers above 8 bits as LEB128 varints, signed
//! ones zigzag-encoded first; `u8`, `i8` and `bool` as one byte; floats little-endian; strings
//! and byte strings as a varint length and the bytes; `Option` as a 0/1 byte; enum variants as
//! a varint `u32` index; sequences and maps as a varint length (which must be known) and their
//! elements; structs and tuples as their fields in order; unit types as nothing.

use std::fmt;

use serde::ser::{self, Serialize};

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl ser::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError(msg.to_string())
    }
}

/// Appends `value` to `out` in postcard's format.
pub(crate) fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    value.serialize(&mut Writer { out })
}

/// The serializer: a `Vec` to append to.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    #[inline(always)]
    fn varint(&mut self, v: u64) {
        // Lengths known at compile time for the usual sizes: copies the compiler inlines,
        // where a slice of run-time length is a `memcpy` call per value.
        if v < 1 << 7 {
            self.out.push(v as u8);
        } else if v < 1 << 14 {
            self.out
                .extend_from_slice(&[v as u8 | 0x80, (v >> 7) as u8]);
        } else if v < 1 << 21 {
            self.out
                .extend_from_slice(&[v as u8 | 0x80, (v >> 7) as u8 | 0x80, (v >> 14) as u8]);
        } else {
            self.varint_long(v);
        }
    }

    #[inline(never)]
    fn varint_long(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    #[inline(always)]
    fn varint128(&mut self, mut v: u128) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    #[inline(always)]
    fn len(&mut self, len: Option<usize>) -> Result<(), WireError> {
        match len {
            Some(n) => {
                self.varint(n as u64);
                Ok(())
            }
            None => Err(WireError(
                "a sequence or map of unknown length cannot be encoded".into(),
            )),
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn zigzag128(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

impl<'b> ser::Serializer for &mut Writer<'b> {
    type Ok = ();
    type Error = WireError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline(always)]
    fn serialize_bool(self, v: bool) -> Result<(), WireError> {
        self.out.push(u8::from(v));
        Ok(())
    }

    #[inline(always)]
    fn serialize_i8(self, v: i8) -> Result<(), WireError> {
        self.out.push(v as u8);
        Ok(())
    }

    #[inline(always)]
    fn serialize_i16(self, v: i16) -> Result<(), WireError> {
        self.varint(zigzag(i64::from(v)));
        Ok(())
    }

    #[inline(always)]
    fn serialize_i32(self, v: i32) -> Result<(), WireError> {
        self.varint(zigzag(i64::from(v)));
        Ok(())
    }

    #[inline(always)]
    fn serialize_i64(self, v: i64) -> Result<(), WireError> {
        self.varint(zigzag(v));
        Ok(())
    }

    #[inline(always)]
    fn serialize_i128(self, v: i128) -> Result<(), WireError> {
        self.varint128(zigzag128(v));
        Ok(())
    }

    #[inline(always)]
    fn serialize_u8(self, v: u8) -> Result<(), WireError> {
        self.out.push(v);
        Ok(())
    }

    #[inline(always)]
    fn serialize_u16(self, v: u16) -> Result<(), WireError> {
        self.varint(u64::from(v));
        Ok(())
    }

    #[inline(always)]
    fn serialize_u32(self, v: u32) -> Result<(), WireError> {
        self.varint(u64::from(v));
        Ok(())
    }

    #[inline(always)]
    fn serialize_u64(self, v: u64) -> Result<(), WireError> {
        self.varint(v);
        Ok(())
    }

    #[inline(always)]
    fn serialize_u128(self, v: u128) -> Result<(), WireError> {
        self.varint128(v);
        Ok(())
    }

    #[inline(always)]
    fn serialize_f32(self, v: f32) -> Result<(), WireError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    #[inline(always)]
    fn serialize_f64(self, v: f64) -> Result<(), WireError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), WireError> {
        let mut buf = [0u8; 4];
        self.serialize_str(v.encode_utf8(&mut buf))
    }

    fn serialize_str(self, v: &str) -> Result<(), WireError> {
        self.serialize_bytes(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), WireError> {
        self.varint(v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }

    #[inline(always)]
    fn serialize_none(self) -> Result<(), WireError> {
        self.out.push(0);
        Ok(())
    }

    #[inline(always)]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), WireError> {
        self.out.push(1);
        value.serialize(self)
    }

    #[inline(always)]
    fn serialize_unit(self) -> Result<(), WireError> {
        Ok(())
    }

    #[inline(always)]
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), WireError> {
        Ok(())
    }

    #[inline(always)]
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), WireError> {
        self.varint(u64::from(index));
        Ok(())
    }

    #[inline(always)]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), WireError> {
        value.serialize(self)
    }

    #[inline(always)]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), WireError> {
        self.varint(u64::from(index));
        value.serialize(self)
    }

    #[inline(always)]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, WireError> {
        self.len(len)?;
        Ok(self)
    }

    #[inline(always)]
    fn serialize_tuple(self, _: usize) -> Result<Self, WireError> {
        Ok(self)
    }

    #[inline(always)]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, WireError> {
        Ok(self)
    }

    #[inline(always)]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WireError> {
        self.varint(u64::from(index));
        Ok(self)
    }

    #[inline(always)]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, WireError> {
        self.len(len)?;
        Ok(self)
    }

    #[inline(always)]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, WireError> {
        Ok(self)
    }

    #[inline(always)]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, WireError> {
        self.varint(u64::from(index));
        Ok(self)
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), WireError> {
        self.serialize_str(&value.to_string())
    }
}

macro_rules! compound {
    ($($tr:ident :: $method:ident),*) => {$(
        impl<'b> ser::$tr for &mut Writer<'b> {
            type Ok = ();
            type Error = WireError;

            #[inline(always)]
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WireError> {
                value.serialize(&mut **self)
            }

            #[inline(always)]
            fn end(self) -> Result<(), WireError> {
                Ok(())
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<'b> ser::SerializeMap for &mut Writer<'b> {
    type Ok = ();
    type Error = WireError;

    #[inline(always)]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), WireError> {
        key.serialize(&mut **self)
    }

    #[inline(always)]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), WireError> {
        value.serialize(&mut **self)
    }

    #[inline(always)]
    fn end(self) -> Result<(), WireError> {
        Ok(())
    }
}

macro_rules! fields {
    ($($tr:ident),*) => {$(
        impl<'b> ser::$tr for &mut Writer<'b> {
            type Ok = ();
            type Error = WireError;

            #[inline(always)]
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<(), WireError> {
                value.serialize(&mut **self)
            }

            #[inline(always)]
            fn end(self) -> Result<(), WireError> {
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::append;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Unit;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Newtype(u32);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Tuple(i8, String);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum E {
        A,
        B(i64),
        C(u8, u16),
        D { x: f32, y: Option<char> },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct All {
        b: bool,
        i: (i8, i16, i32, i64, i128),
        u: (u8, u16, u32, u64, u128),
        f: (f32, f64),
        c: char,
        s: String,
        bytes: Vec<u8>,
        o: (Option<u32>, Option<u32>),
        units: (Unit, (), Newtype, Tuple),
        es: Vec<E>,
        map: BTreeMap<String, Vec<i32>>,
        nested: Vec<Vec<u64>>,
        r: Result<u32, String>,
    }

    fn same<T: Serialize>(v: &T) {
        let mut ours = Vec::new();
        append(v, &mut ours).unwrap();
        assert_eq!(ours, postcard::to_allocvec(v).unwrap());
    }

    #[test]
    fn byte_for_byte_postcard() {
        for k in [0u32, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let k64 = u64::from(k);
            let v = All {
                b: k % 2 == 0,
                i: (
                    k as i8,
                    k as i16,
                    k as i32,
                    -(k64 as i64),
                    -(i128::from(k)) << 70,
                ),
                u: (k as u8, k as u16, k, k64 << 31, u128::from(k) << 100),
                f: (k as f32 * 1.5, -(k as f64) / 3.0),
                c: char::from_u32(0x1F600 + k % 50).unwrap(),
                s: "é".repeat((k % 7) as usize),
                bytes: vec![k as u8; (k % 300) as usize],
                o: (Some(k), None),
                units: (Unit, (), Newtype(k), Tuple(-1, "x".into())),
                es: vec![
                    E::A,
                    E::B(-(k64 as i64)),
                    E::C(1, k as u16),
                    E::D {
                        x: 0.25,
                        y: Some('z'),
                    },
                ],
                map: (0..k % 5)
                    .map(|i| (i.to_string(), vec![i as i32, -1]))
                    .collect(),
                nested: vec![vec![k64, u64::MAX], vec![]],
                r: if k % 3 == 0 { Ok(k) } else { Err("no".into()) },
            };
            same(&v);
            let mut ours = Vec::new();
            append(&v, &mut ours).unwrap();
            assert_eq!(postcard::from_bytes::<All>(&ours).unwrap(), v);
        }
        for v in [i64::MIN, -1, 0, 1, i64::MAX] {
            same(&v);
        }
        same(&(0..2000u64).map(|i| i * i * i).collect::<Vec<_>>());
    }

    #[test]
    fn unknown_lengths_are_an_error() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                s.serialize_seq(None)?.end()
            }
        }
        let mut out = Vec::new();
        assert!(append(&Unsized, &mut out).is_err());
        assert!(postcard::to_allocvec(&Unsized).is_err());
    }
}
