//! A real Alertmanager for the benches (Debian's `prometheus-alertmanager`) on a free
//! 127.0.0.1 port, routing everything to a receiver that sends nothing; killed on drop.

use std::process::{Child, Command, Stdio};

pub struct Alertmanager {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts it; a missing binary stops the bench naming the install step.
pub fn start() -> Alertmanager {
    let binary = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Alertmanager is not installed: apt-get install -y --no-install-recommends prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: none\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("am").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Alertmanager {
        child,
        port,
        _dir: dir,
    }
}
