//! The image library against real files: imports of every format and every way an
//! upload can be bad, export round trips, and unpacks, adversarial ones included.

mod common;
mod t10_import;
mod t10_unpack;
mod t30_import_errors;
mod t90_unpack_adversarial;
