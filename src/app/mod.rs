//! The application: the command line and what it starts. Nothing here decides or talks to a
//! provider itself; it composes the roles, the admin server and the simulators.
//!
//! - [`cli`]: the command line (clap), logging and exit codes.
//! - [`run`]: every role in one process (`usersync run`).
//! - [`demo`]: the seed story on embedded defaults (`usersync demo`).
//! - [`scenario`]: `usersync decide`, the engine run offline against the Outreach simulator.
//! - [`health`]: the health listener every role can serve (`--health-listen`).
//! - [`sim_command`]: `usersync sim`, the simulators of the `usersync-sim` crate on their ports.
//!
//! `demo`, `scenario` and `sim_command` come with the default feature `sim`, which brings the
//! simulators; a build without it has no test equipment inside.

pub mod cli;
#[cfg(feature = "sim")]
pub mod demo;
pub mod health;
pub mod run;
#[cfg(feature = "sim")]
pub mod scenario;
#[cfg(feature = "sim")]
pub mod sim_command;
