//! Flow and drop events: read from the data path (`reader`), named
//! (`record`), kept and fanned out to `observe` clients (`hub`), and
//! exported as JSON lines (`file`) and IPFIX (`ipfix`).

pub mod file;
pub mod hub;
pub mod ipfix;
pub mod reader;
pub mod record;

pub use hub::{EventCounters, Hub, Stamped};
pub use record::{Namer, Record};
