//! The SCRAM verifier thread. Deriving a user's verifier costs `scram_iterations` HMACs
//! (PBKDF2; about half a millisecond at PostgreSQL's default of 4096), so it is done neither
//! before listening (1,000 users would delay the start by over half a second) nor on a reactor
//! (a burst of first logins would stall every client of that reactor). This thread derives
//! first the verifiers a login is waiting for, then, ahead of logins, every other user's.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use crate::client::users::ScramSecret;

/// Called once the verifier a login waits for is derived.
pub(crate) type Done = Box<dyn FnOnce() + Send>;

enum Job {
    /// A login waits for this one.
    Login(Arc<ScramSecret>, Done),
    /// Derive these when no login waits (they replace the previous list: a new login table
    /// supersedes the old one).
    Ahead(Vec<Arc<ScramSecret>>),
    Stop,
}

/// The thread; stopped and joined by [`Deriver::stop`] (or on drop).
pub(crate) struct Deriver {
    tx: Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

/// Where the reactors and the secrets watcher send their work.
#[derive(Clone)]
pub(crate) struct Verifiers(Sender<Job>);

impl Deriver {
    pub(crate) fn start() -> std::io::Result<Deriver> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pglink-scram".into())
            .spawn(move || run(&rx))?;
        Ok(Deriver {
            tx,
            thread: Some(thread),
        })
    }

    pub(crate) fn verifiers(&self) -> Verifiers {
        Verifiers(self.tx.clone())
    }

    /// Stops the thread (after the derivation in progress, if any) and waits for it.
    pub(crate) fn stop(&mut self) {
        let _ = self.tx.send(Job::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Deriver {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Verifiers {
    /// Derives `secret` for a waiting login, then calls `done` on the thread. When the thread
    /// has stopped, the secret comes back: the caller derives it itself rather than leave the
    /// login waiting.
    pub(crate) fn for_login(
        &self,
        secret: Arc<ScramSecret>,
        done: Done,
    ) -> Result<(), Arc<ScramSecret>> {
        self.0
            .send(Job::Login(secret, done))
            .map_err(|e| match e.0 {
                Job::Login(secret, _) => secret,
                _ => unreachable!("the job sent is a login"),
            })
    }

    /// No thread behind it (tests of other parts): logins derive their verifier themselves.
    #[cfg(all(test, feature = "metrics"))]
    pub(crate) fn none() -> Verifiers {
        Verifiers(mpsc::channel().0)
    }

    /// Derives these when the thread is otherwise idle.
    pub(crate) fn ahead(&self, secrets: Vec<Arc<ScramSecret>>) {
        let _ = self.0.send(Job::Ahead(secrets));
    }
}

fn run(rx: &Receiver<Job>) {
    let mut ahead: Vec<Arc<ScramSecret>> = Vec::new();
    loop {
        let job = if ahead.is_empty() {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        } else {
            match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => {
                    if let Some(secret) = ahead.pop() {
                        secret.derive();
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
            }
        };
        match job {
            Job::Login(secret, done) => {
                secret.derive();
                done();
            }
            Job::Ahead(mut secrets) => {
                secrets.retain(|s| s.get().is_none());
                // Popped from the end: reversed, they are derived in the order given.
                secrets.reverse();
                ahead = secrets;
            }
            Job::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::FixedRng;
    use std::time::Duration;

    fn secret(password: &str) -> Arc<ScramSecret> {
        let mut rng = FixedRng::new(vec![5u8; 16]);
        Arc::new(ScramSecret::new(password, 4096, &mut rng))
    }

    #[test]
    fn a_login_gets_its_verifier_and_the_rest_are_derived_ahead() {
        let mut deriver = Deriver::start().unwrap();
        let verifiers = deriver.verifiers();
        let ahead: Vec<_> = (0..5).map(|i| secret(&format!("pw{i}"))).collect();
        verifiers.ahead(ahead.clone());
        let login = secret("login");
        let (tx, rx) = mpsc::channel();
        verifiers
            .for_login(login.clone(), Box::new(move || tx.send(()).unwrap()))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(login.get().is_some(), "derived before `done` is called");
        // The same verifier PostgreSQL would derive from that salt.
        let again = secret("login");
        assert_eq!(login.get(), Some(again.derive()));
        deriver.stop();
    }

    #[test]
    fn a_stopped_thread_gives_the_secret_back() {
        let mut deriver = Deriver::start().unwrap();
        let verifiers = deriver.verifiers();
        deriver.stop();
        let s = secret("pw");
        let back = verifiers.for_login(s.clone(), Box::new(|| {})).unwrap_err();
        assert!(Arc::ptr_eq(&back, &s));
    }

    #[test]
    fn secrets_given_ahead_are_derived_without_a_login() {
        let mut deriver = Deriver::start().unwrap();
        let ahead: Vec<_> = (0..3).map(|i| secret(&format!("p{i}"))).collect();
        deriver.verifiers().ahead(ahead.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while ahead.iter().any(|s| s.get().is_none()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(ahead.iter().all(|s| s.get().is_some()));
        deriver.stop();
    }
}
