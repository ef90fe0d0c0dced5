//! Simulators of the external services.
