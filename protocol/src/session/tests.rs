//! Scenarios and properties of the whole exchange, through [`super::pair`].

use super::pair::*;
