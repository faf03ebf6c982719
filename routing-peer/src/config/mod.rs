//! The declarative configuration: one routing peer and the Networks it
//! serves, in NetBird's terms. Parsing is strict (unknown fields are errors)
//! and validation reports every problem at once, each with the file, the
//! field and the fix.

mod cache;
mod load;
mod model;
pub mod netbird;
#[cfg(test)]
mod tests;
mod validate;

pub use cache::{CacheStats, ParseCache};
pub use load::{load, others_can_read, parse, read_text, validated, ConfigError, Loaded, Problem};
pub use model::*;
pub use validate::validate;
