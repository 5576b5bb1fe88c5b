//! Names, checked before they become paths: pool names as Incus checks API names
//! (`validate.IsAPIName`), volume names as single, plain path components.

use crate::error::{Error, Result};

/// Checks a storage pool name as Incus does.
pub fn check_pool_name(name: &str) -> Result<()> {
    match api_name_problem(name) {
        Some(why) => Err(Error::InvalidPoolName(why)),
        None => Ok(()),
    }
}

/// What is wrong with `name` as an Incus API name (`validate.IsAPIName`: pools,
/// profiles), or `None`.
pub fn api_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("No name provided".into());
    }
    if name.len() > 64 {
        return Some("Maximum name length is 64 characters".into());
    }
    if name.chars().any(char::is_whitespace) {
        return Some("Name cannot contain white space".into());
    }
    for c in ['$', '?', '&', '+', '"', '\'', '`', '*', '/'] {
        if name.contains(c) {
            return Some(format!("Name contains invalid character {:?}", c.to_string()));
        }
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Some("Names must start and end with an alphanumeric character".into());
    }
    None
}

/// Checks that a volume name is one plain path component. Instance names have their
/// own, stricter rules where instances are made; this is the storage side's floor.
pub fn check_volume_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "not a name"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.starts_with('.') {
        "starts with '.' (kept for the pool's own files)"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidVolumeName {
        name: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn t10_pool_names() {
        for ok in ["pool1", "default", "a", "my-pool.2", "x_y"] {
            check_pool_name(ok).expect(ok);
        }
        for (bad, msg) in [
            ("", "No name provided"),
            ("-pool", "Names must start and end with an alphanumeric character"),
            ("pool-", "Names must start and end with an alphanumeric character"),
            ("a b", "Name cannot contain white space"),
            ("a/b", "Name contains invalid character \"/\""),
            ("a*b", "Name contains invalid character \"*\""),
        ] {
            let e = check_pool_name(bad).expect_err(bad);
            assert_eq!(e.to_string(), format!("Invalid storage pool name: {msg}"));
        }
        assert!(check_pool_name(&"a".repeat(65)).is_err());
        assert!(check_pool_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn t10_volume_names() {
        for ok in ["c1", "my-container", "e60cf18b"] {
            check_volume_name(ok).expect(ok);
        }
        for bad in ["", ".", "..", "a/b", "../x", ".hidden", "a\0b"] {
            assert!(check_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        // An accepted volume name is exactly one normal path component.
        #[test]
        fn t20_volume_name_is_one_component(name in "[a-z./\\-]{0,8}") {
            if check_volume_name(&name).is_ok() {
                let p = std::path::Path::new("/pool/containers").join(&name);
                prop_assert_eq!(p.parent(), Some(std::path::Path::new("/pool/containers")));
                prop_assert!(matches!(
                    p.components().next_back(),
                    Some(std::path::Component::Normal(_))
                ));
            }
        }

        // An accepted pool name never holds a path separator or starts with a dot.
        #[test]
        fn t20_pool_name_is_one_component(name in "[a-z./ *\\-]{0,10}") {
            if check_pool_name(&name).is_ok() {
                prop_assert!(!name.contains('/') && !name.starts_with('.'));
                prop_assert!(name != ".." && name != ".");
            }
        }
    }
}
