//! Reading the raw configuration out of parsed JSON, each error naming its path.
//!
//! The configuration is parsed by serde_json into a plain tree ([`Json`]) and read from
//! there by hand ([`FromJson`] in `raw.rs`), not by serde's derived `Deserialize`: the
//! derived code of some twenty types and the tracking of the path through them, run once
//! at start, were 95 KB of the filter's 650 KB `.wasm`, while the path of a bad field
//! comes for free while walking a tree. The tree is not `serde_json::Value`, whose reader
//! carries a second JSON parser for the `raw_value` feature the request bodies use.
//! Messages are serde's own (`unknown field `brust`, expected one of ...`,
//! `invalid type: string "five", expected u64`), without a line and column: the path
//! says where (a syntax error, found by serde_json, keeps both).

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Unexpected, Visitor};
use serde_json::Error;

use super::ConfigError;

/// A JSON value. An object keeps its members in the order written.
pub(super) enum Json {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Unsigned(n))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Signed(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
        Ok(Json::Float(n))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry()? {
            members.push(member);
        }
        Ok(Json::Object(members))
    }
}

impl Json {
    /// What serde's messages call it: `string "five"`, `integer `-5``, `map`...
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Json::Null => Unexpected::Unit,
            Json::Bool(b) => Unexpected::Bool(*b),
            Json::Unsigned(n) => Unexpected::Unsigned(*n),
            Json::Signed(n) => Unexpected::Signed(*n),
            Json::Float(n) => Unexpected::Float(*n),
            Json::String(s) => Unexpected::Str(s),
            Json::Array(_) => Unexpected::Seq,
            Json::Object(_) => Unexpected::Map,
        }
    }
}

/// Where a value sits in the configuration: `tiers.free.limits[1].window`.
#[derive(Clone, Copy)]
pub(super) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Path::Root => Ok(()),
            Path::Key(Path::Root, key) => f.write_str(key),
            Path::Key(parent, key) => write!(f, "{parent}.{key}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The error `e` at `path`.
#[cold]
#[inline(never)]
fn error_at(path: Path<'_>, e: Error) -> ConfigError {
    ConfigError { path: path.to_string(), message: e.to_string() }
}

/// `v` is not what was `expected`.
#[cold]
#[inline(never)]
fn invalid_type(v: &Json, path: Path<'_>, expected: &str) -> ConfigError {
    error_at(path, Error::invalid_type(v.unexpected(), &expected))
}

/// A configuration value read from JSON.
pub(super) trait FromJson: Sized {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError>;
}

impl FromJson for bool {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        match v {
            Json::Bool(b) => Ok(*b),
            v => Err(invalid_type(v, path, "a boolean")),
        }
    }
}

impl FromJson for String {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        match v {
            Json::String(s) => Ok(s.clone()),
            v => Err(invalid_type(v, path, "a string")),
        }
    }
}

/// A whole number that fits `T` (`what` names it in messages, as serde does: `u64`).
#[inline(never)]
fn whole<T: TryFrom<u64>>(v: &Json, path: Path<'_>, what: &str) -> Result<T, ConfigError> {
    match v {
        Json::Unsigned(n) => T::try_from(*n).map_err(|_| invalid_value(v, path, what)),
        Json::Signed(_) => Err(invalid_value(v, path, what)),
        v => Err(invalid_type(v, path, what)),
    }
}

#[cold]
#[inline(never)]
fn invalid_value(v: &Json, path: Path<'_>, expected: &str) -> ConfigError {
    error_at(path, Error::invalid_value(v.unexpected(), &expected))
}

macro_rules! from_json_whole {
    ($($t:ty),*) => {$(
        impl FromJson for $t {
            fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
                whole(v, path, stringify!($t))
            }
        }
    )*};
}

from_json_whole!(u8, u32, u64, usize);

/// A name among a fixed set (`"token_bucket"`), by serde's derived reader of the enum
/// (a small one: from a string only).
pub(super) fn name_of<T: for<'de> Deserialize<'de>>(v: &Json, path: Path<'_>) -> Result<T, ConfigError> {
    match v {
        Json::String(s) => {
            T::deserialize(serde::de::value::StrDeserializer::<Error>::new(s)).map_err(|e| error_at(path, e))
        }
        v => Err(invalid_type(v, path, "a string")),
    }
}

/// `null` is `None`, as with serde; an absent field is the caller's to default.
impl<T: FromJson> FromJson for Option<T> {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        match v {
            Json::Null => Ok(None),
            v => T::from_json(v, path).map(Some),
        }
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let Json::Array(items) = v else { return Err(invalid_type(v, path, "a sequence")) };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(T::from_json(item, Path::Index(&path, i))?);
        }
        Ok(out)
    }
}

/// A map of names (`tiers`, model prices), sorted by name; of a name written twice, the
/// last counts.
pub(super) type Named<T> = Vec<(String, T)>;

impl<T: FromJson> FromJson for Named<T> {
    fn from_json(v: &Json, path: Path<'_>) -> Result<Self, ConfigError> {
        let Json::Object(members) = v else { return Err(invalid_type(v, path, "a map")) };
        let mut out: Named<T> = Vec::with_capacity(members.len());
        for (name, item) in members {
            let item = T::from_json(item, Path::Key(&path, name))?;
            match out.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
                Ok(i) => {
                    if let Some(slot) = out.get_mut(i) {
                        slot.1 = item;
                    }
                }
                Err(i) => out.insert(i, (name.clone(), item)),
            }
        }
        Ok(out)
    }
}

/// An object with a fixed set of fields, any other rejected.
pub(super) struct Object<'a> {
    members: &'a [(String, Json)],
    path: Path<'a>,
}

impl<'a> Object<'a> {
    /// `v` as an object whose fields are all among `fields`, each once.
    pub fn new(v: &'a Json, path: Path<'a>, fields: &'static [&'static str]) -> Result<Self, ConfigError> {
        let Json::Object(members) = v else { return Err(invalid_type(v, path, "an object")) };
        for (i, (name, _)) in members.iter().enumerate() {
            if !fields.contains(&name.as_str()) {
                return Err(error_at(Path::Key(&path, name), Error::unknown_field(name, fields)));
            }
            if members.iter().take(i).any(|(earlier, _)| earlier == name) {
                return Err(error_at(path, Error::custom(format_args!("duplicate field `{name}`"))));
            }
        }
        Ok(Object { members, path })
    }

    #[inline(never)]
    fn get(&self, name: &str) -> Option<&'a Json> {
        self.members.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The field `name`, or `default` when it is absent.
    #[inline(never)]
    pub fn or<T: FromJson>(&self, name: &str, default: T) -> Result<T, ConfigError> {
        match self.get(name) {
            Some(v) => T::from_json(v, Path::Key(&self.path, name)),
            None => Ok(default),
        }
    }

    /// The field `name`, which must be there.
    #[inline(never)]
    pub fn required<T: FromJson>(&self, name: &'static str) -> Result<T, ConfigError> {
        match self.get(name) {
            Some(v) => T::from_json(v, Path::Key(&self.path, name)),
            None => Err(error_at(self.path, Error::missing_field(name))),
        }
    }

    /// The object `name`, or the defaults of all its fields when it is absent.
    #[inline(never)]
    pub fn or_defaults<T: FromJson>(&self, name: &str) -> Result<T, ConfigError> {
        match self.get(name) {
            Some(v) => T::from_json(v, Path::Key(&self.path, name)),
            None => T::from_json(&Json::Object(Vec::new()), Path::Root),
        }
    }
}
