//! The open wire enum (STYLE.md 6): every value of the underlying integer is representable, so an
//! unknown code from a newer peer survives decoding and re-encoding unchanged.

/// Declares a wire enum encoded as a postcard `u32` varint, with an `Unknown(u32)` variant for
/// values this version does not name. `From<u32>` maps a known value to its named variant, so
/// `Unknown` never holds a named value and encoding is canonical.
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this version of the protocol does not name.
            Unknown(u32),
        }

        impl $name {
            /// Every named variant, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The variant's name as the spec writes it, or `None` for `Unknown`.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $( $name::$variant => Some(stringify!($variant)), )*
                    $name::Unknown(_) => None,
                }
            }
        }

        impl From<u32> for $name {
            fn from(v: u32) -> Self {
                match v {
                    $( x if x == $value => $name::$variant, )*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                match v {
                    $( $name::$variant => $value, )*
                    $name::Unknown(other) => other,
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u32(u32::from(*self))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <u32 as serde::Deserialize>::deserialize(d).map($name::from)
            }
        }

        #[cfg(feature = "arbitrary")]
        impl<'a> arbitrary::Arbitrary<'a> for $name {
            fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
                Ok($name::from(u32::arbitrary(u)?))
            }
        }
    };
}
