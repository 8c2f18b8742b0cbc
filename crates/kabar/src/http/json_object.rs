//! Request bodies that must be JSON objects. A derived `Deserialize` struct also accepts a JSON
//! array of its fields in order, so `[]` would pass for a body whose fields are all optional (a
//! schemathesis negative-mode request started a drain that way); the OpenAPI file says `object`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{value::MapAccessDeserializer, Deserialize, Deserializer, MapAccess, Visitor};

/// `T` read only from a JSON object; anything else is refused like any other type mismatch.
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Obj<T>, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectOnly(PhantomData)).map(Obj)
    }
}

#[cfg(test)]
mod tests {
    use super::Obj;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Optional {
        #[serde(default)]
        a: Option<u64>,
    }

    #[test]
    fn a_json_array_is_not_an_object_even_when_every_field_is_optional() {
        assert!(serde_json::from_str::<Optional>("[]").is_ok(), "the derived impl accepts arrays: the reason for Obj");
        assert!(serde_json::from_str::<Obj<Optional>>("[]").is_err());
        assert!(serde_json::from_str::<Obj<Optional>>("[5]").is_err());
        assert!(serde_json::from_str::<Obj<Optional>>("null").is_err());
        assert_eq!(serde_json::from_str::<Obj<Optional>>("{}").map(|o| o.0).ok(), Some(Optional { a: None }));
        assert_eq!(serde_json::from_str::<Obj<Optional>>(r#"{"a":5}"#).map(|o| o.0).ok(), Some(Optional { a: Some(5) }));
        assert!(serde_json::from_str::<Obj<Optional>>(r#"{"b":5}"#).is_err());
    }
}
