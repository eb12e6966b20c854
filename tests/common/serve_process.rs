//! A `scientist serve` process, the built binary, on an OS-chosen loopback port: started
//! with the caller's flags and environment, its URL read from what it prints, killed when
//! dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct ServeProcess {
    pub child: Child,
    pub url: String,
}

impl ServeProcess {
    /// `scientist serve --listen 127.0.0.1:0` with a cleared environment, then `configure`
    /// (more flags, the store's environment).
    pub fn start(configure: impl FnOnce(&mut Command) -> &mut Command) -> ServeProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_scientist"));
        command.args(["serve", "--listen", "127.0.0.1:0"]).env_clear();
        configure(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start scientist serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let url = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.split("listening on ").nth(1).map(str::to_owned))
            .expect("serve says where it listens");
        // Keep reading so that the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        ServeProcess { child, url }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
