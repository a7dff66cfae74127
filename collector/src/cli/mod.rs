//! The command line: the admin commands and what they print.
pub mod quickstart;
pub mod views;
