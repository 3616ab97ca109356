//! The one PATH search: the places execvp tries for a command name, in order. The planner
//! looks them up in the image (to read the program ahead); the child, inside the finished root,
//! takes the first executable one.

use std::path::PathBuf;

/// `DIR/name` for each non-empty entry of the environment's PATH, in order.
pub fn candidates<'a>(
    name: &'a str,
    env: &'a [(String, String)],
) -> impl Iterator<Item = PathBuf> + 'a {
    crate::env_list::get(env, "PATH")
        .unwrap_or("")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(move |d| PathBuf::from(d).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_path_order_without_empty_entries() {
        let env = vec![("PATH".to_string(), "/a::/b/:rel".to_string())];
        let got: Vec<PathBuf> = candidates("x", &env).collect();
        assert_eq!(got, ["/a/x", "/b/x", "rel/x"].map(PathBuf::from));
        assert_eq!(candidates("x", &[]).count(), 0);
    }
}
