//! Real application servers behind the sidecar, answering the way deployed ones do:
//! Node's `http` module (a body written in pieces goes out chunked, on a kept connection)
//! and PHP's built-in server (no length: the body ends when it closes the connection).
//! Each must reach the caller whole, and Node's kept connection must carry the next
//! requests. Needs `node` and `php`; under `CI=true` a missing one is a failure.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bsk_sidecar::envelope::{BodyShape, Layer};

use support::*;

const CONFIG: &str = r#"
admin: { listen: "off" }
limits:
  per_ip_rate: { per_second: 1000, burst: 1000 }
peers:
{PEER_BSK}
listeners:
  - name: public
    listen: 127.0.0.1:0
    routes:
      - { path: /form, from: bsk, fresh: off, envelope: [form, aes], upstream: "http://{APP}/app/form" }
"#;

/// An application server process, killed when dropped.
struct App {
    child: Child,
    addr: SocketAddr,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args`, which prints a line containing `http://127.0.0.1:<port>` (on
/// stdout or stderr) once it listens; `None` when the program is missing outside CI.
fn start_app(program: &str, args: &[&str], on_stderr: bool) -> Option<App> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    if on_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if in_ci() => panic!("{program} is needed under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: {program} cannot be started ({e}); under CI=true this fails");
            return None;
        }
    };
    let out: Box<dyn std::io::Read + Send> = match on_stderr {
        true => Box::new(child.stderr.take().unwrap()),
        false => Box::new(child.stdout.take().unwrap()),
    };
    let mut lines = BufReader::new(out).lines();
    // The server's first lines, until the one that names its address (the read blocks
    // until the server prints it, or ends if the server exits).
    let addr = loop {
        let line = match lines.next() {
            Some(Ok(l)) => l,
            _ => panic!("{program} exited before it listened"),
        };
        if let Some(at) = line.find("http://127.0.0.1:") {
            let port: String = line[at + "http://127.0.0.1:".len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            break SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().unwrap()));
        }
    };
    // Keep draining the output so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Some(App { child, addr })
}

/// Sends each of `plains` sealed `[form, aes]` through the sidecar, one after another on
/// one client connection (so one connection worker, which keeps its own upstream
/// connections); the application's answers.
async fn through(sc: &Sidecar, plains: &[String]) -> Vec<Answer> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for plain in plains {
        let sealed = seal(
            &[Layer::Form, Layer::Aes],
            &sc.keys("bsk"),
            plain.as_bytes(),
            BodyShape::Form,
        );
        let exchange = async {
            sender.ready().await.unwrap();
            let resp = sender
                .send_request(sealed_post(sc.addr, "/form", &sealed))
                .await
                .unwrap();
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        };
        answers.push(
            tokio::time::timeout(PATIENCE, exchange)
                .await
                .expect("an answer in time"),
        );
    }
    answers
}

fn payloads() -> Vec<String> {
    (0..3)
        .map(|n| format!(r#"{{"userid":"852741963{n}","name":"অনুপম ঘোষ","n":{n}}}"#))
        .collect()
}

async fn sidecar_for(app: &App) -> Sidecar {
    Sidecar::start(
        CONFIG,
        &[
            ("{PEER_BSK}", PEER_BSK.to_string()),
            ("{APP}", app.addr.to_string()),
        ],
    )
    .await
}

/// Node answers each request with its body in two writes (so chunked) and names the
/// connection it came on: 1 for the first connection it accepted, 2 for the next.
const NODE_APP: &str = r#"
const http = require('http');
let conns = 0;
const server = http.createServer((req, res) => {
  if (req.socket.serial === undefined) req.socket.serial = ++conns;
  const parts = [];
  req.on('data', (d) => parts.push(d));
  req.on('end', () => {
    const body = Buffer.concat(parts).toString();
    res.setHeader('Content-Type', 'application/json');
    res.setHeader('X-Connection', String(req.socket.serial));
    res.write(body.slice(0, 10));
    res.end(body.slice(10));
  });
});
server.listen(0, '127.0.0.1', () => console.log('http://127.0.0.1:' + server.address().port));
"#;

#[tokio::test]
async fn a_chunked_answer_from_node_reaches_the_caller_whole_and_its_connection_is_kept() {
    let Some(app) = start_app("node", &["-e", NODE_APP], false) else {
        return;
    };
    let sc = sidecar_for(&app).await;
    let plains = payloads();
    for (n, (answer, plain)) in through(&sc, &plains).await.iter().zip(&plains).enumerate() {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(&answer.text(), plain);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.header("transfer-encoding"), None);
        // One connection carried all three: the chunked answers left it reusable.
        assert_eq!(answer.header("x-connection"), Some("1"), "request {n}");
    }
}

#[tokio::test]
async fn an_answer_php_ends_by_closing_its_connection_reaches_the_caller_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.php"),
        "<?php\nheader('Content-Type: application/json');\necho file_get_contents('php://input');\n",
    )
    .unwrap();
    let docroot = dir.path().display().to_string();
    let Some(app) = start_app("php", &["-S", "127.0.0.1:0", "-t", &docroot], true) else {
        return;
    };
    let sc = sidecar_for(&app).await;
    let plains = payloads();
    for (answer, plain) in through(&sc, &plains).await.iter().zip(&plains) {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(&answer.text(), plain);
        assert_eq!(
            answer.header("x-powered-by").map(|v| v.starts_with("PHP/")),
            Some(true)
        );
        assert_eq!(answer.header("connection"), None);
    }
}
