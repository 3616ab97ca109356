//! The one environment type: `NAME=VALUE` pairs in order, a name at most once, as the host gave
//! them and as the command will get them. Every look-up and assignment goes through here.

/// The value of `key`, if set (possibly empty).
pub fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The value of `key` when set and not empty: how PATH-like and scheduler variables are read.
pub fn get_nonempty<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    get(env, key).filter(|v| !v.is_empty())
}

/// An environment from literal pairs, for unit tests.
#[cfg(test)]
pub fn from_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_values_are_set_but_not_nonempty() {
        let env = from_pairs(&[("A", "2"), ("B", "")]);
        assert_eq!(get(&env, "A"), Some("2"));
        assert_eq!(get(&env, "B"), Some(""));
        assert_eq!(get_nonempty(&env, "B"), None);
        assert_eq!(get(&env, "C"), None);
    }
}
