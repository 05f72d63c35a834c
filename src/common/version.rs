//! Which build this is: the package version and the git revision it was built from, as
//! `--version`, `/healthz` and `exfilwatch_build_info` report them.

/// The package version, e.g. "0.1.0".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision of the build ("unknown" when built outside a checkout).
pub const REVISION: &str = env!("EXFILWATCH_REVISION");

/// "0.1.0 (revision 0123456789ab)".
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("EXFILWATCH_REVISION"),
    ")"
);
