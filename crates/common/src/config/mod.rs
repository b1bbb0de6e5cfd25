//! Config machinery shared by dfdaemon, dfget and the scheduler.
//!
//! - [`load_yaml`]: YAML text to a typed config, with unknown keys as warnings
//!   (`unknown key "proxy.foo" in /etc/dragonfly/dfget.yaml (ignored)`) and bad values as errors
//!   naming the key path and the value (`storage.diskGCThreshold: "50Gx" is not a size`).
//! - Value types written as humans write them: [`Size`] (`50Gi`), [`Duration`] (`6h`), [`Port`],
//!   [`PortRange`], [`Pattern`] (a regex compiled at load), [`Percent`], [`Weight`],
//!   [`ListenAddr`], and the [`ip`] field helpers.
//! - The command-line flow: [`load_for_cli`] (explicit path must exist; default paths may not).

mod duration;
mod error;
mod load;
mod pattern;
mod port;
mod size;
mod values;

pub use duration::{Duration, DurationError};
pub use error::ConfigError;
pub use load::{
    ConfigOrigin, LoadOptions, Loaded, LoadedFrom, cli_message, config_for_cli, load_for_cli,
    load_yaml, load_yaml_with, read_config_file, resolve_config_path,
};
pub use pattern::{Pattern, PatternError, looks_like_placeholder};
pub use port::{Port, PortError, PortRange};
pub use size::{Size, SizeError};
pub use values::{ListenAddr, Percent, Weight, ip};
