//! `ferry key add|list|remove|passwd`.

use crate::common::{Env, PASSWORD, json_lines, stderr};

const CHEAP: [&str; 4] = ["--kdf-memory", "64", "--kdf-iterations", "1"];

fn keys(env: &Env, pw: &str) -> Vec<serde_json::Value> {
    let out = env.ferry_pw(pw).args(["key", "list", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

fn opens(env: &Env, pw: &str) -> Option<i32> {
    env.ferry_pw(pw).arg("snapshots").output().unwrap().status.code()
}

fn current_id(list: &[serde_json::Value]) -> String {
    let cur: Vec<_> = list.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(cur.len(), 1, "one current key: {list:?}");
    cur[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn key_management() {
    if crate::common::under_qemu() {
        return;
    }
    let env = Env::new();
    let src = env.path("src");
    crate::common::write(&src.join("f"), b"data under several keys");
    env.backup(&src, &[]);
    let first = keys(&env, PASSWORD);
    assert_eq!(first.len(), 1);
    let first_id = current_id(&first);
    assert_eq!(first[0]["kdf"]["memory_kib"], 64);

    // key add, new password from the environment.
    let out =
        env.ferry().args(["key", "add", "--json"]).args(CHEAP).env("FERRY_NEW_PASSWORD", "second").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let added = json_lines(&out.stdout);
    assert_eq!(added[0]["action"], "added");
    let second_id = added[0]["id"].as_str().unwrap().to_string();
    assert_eq!(opens(&env, "second"), Some(0), "the new password opens the repository");
    assert_eq!(opens(&env, PASSWORD), Some(0), "the old one still does");
    let list = keys(&env, PASSWORD);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(current_id(&list), first_id);
    assert_eq!(current_id(&keys(&env, "second")), second_id, "current marks the key that unlocked");

    // key add, new password from a file (first line only).
    let pwfile = env.path("third.txt");
    std::fs::write(&pwfile, "third\nignored second line\n").unwrap();
    let out =
        env.ferry().args(["key", "add", "--json", "--new-password-file"]).arg(&pwfile).args(CHEAP).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let third_id = json_lines(&out.stdout)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(opens(&env, "third"), Some(0));
    assert_eq!(opens(&env, "ignored second line"), Some(12));
    assert_eq!(keys(&env, "third").len(), 3);

    // Remove the other keys (by prefix) from a session opened with the second.
    let out = env.ferry_pw("second").args(["key", "remove", &first_id[..12]]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = env.ferry_pw("second").args(["key", "remove", &third_id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(opens(&env, PASSWORD), Some(12), "the removed key's password no longer opens");
    assert_eq!(opens(&env, "third"), Some(12));
    let list = keys(&env, "second");
    assert_eq!(list.len(), 1);
    assert_eq!(current_id(&list), second_id);

    // A key that does not exist.
    let out = env.ferry_pw("second").args(["key", "remove", "00000000"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no key 00000000"), "{}", stderr(&out));

    // key passwd: the old password fails, the new one works, the data is untouched.
    let out = env
        .ferry_pw("second")
        .args(["key", "passwd"])
        .args(CHEAP)
        .env("FERRY_NEW_PASSWORD", "fourth")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(opens(&env, "second"), Some(12));
    assert_eq!(opens(&env, "fourth"), Some(0));
    let list = keys(&env, "fourth");
    assert_eq!(list.len(), 1, "passwd replaces the key: {list:?}");
    let fourth_id = current_id(&list);
    assert_ne!(fourth_id, second_id);
    let target = env.path("target");
    let out = env.ferry_pw("fourth").args(["restore", "latest", "--target"]).arg(&target).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"data under several keys");

    // Removing the key in use is refused with a clear error, and changes nothing.
    let out = env.ferry_pw("fourth").args(["key", "remove", &fourth_id]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("ferry: error: ") && err.contains("unlocked with"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(opens(&env, "fourth"), Some(0));
    assert_eq!(keys(&env, "fourth").len(), 1);
}
