//! Providers start and stop blocks of managers. Only `local` exists so far: pilot processes on
//! this machine.

pub mod local;
