//! `usersync decide`.
