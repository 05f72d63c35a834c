//! What every layer shares and nothing else: the wall clock, error chains, units, the one YAML
//! parse function, network blocks, fast hash maps, retry backoff and outgoing HTTP clients. Nothing here
//! imports another module of the crate.

pub mod clock;
pub mod error;
pub mod hash;
pub mod heap;
pub mod http;
pub mod net;
pub mod retry;
pub mod text;
pub mod units;
pub mod version;
pub mod yaml;

pub use error::error_chain;
