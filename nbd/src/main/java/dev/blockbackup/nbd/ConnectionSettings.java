package dev.blockbackup.nbd;

import io.netty.handler.ssl.SslContext;
import java.util.Map;

/**
 * What every connection of one server shares: the exports by name, the bounded queue to the pool
 * that runs block I/O off the event loops, the back-pressure limit (requests in flight per
 * connection), the seconds a client has to finish its handshake (0: no limit), and the TLS context
 * if the server requires TLS (null for plaintext).
 */
record ConnectionSettings(Map<String, NbdExport> exports, WorkQueue workers, int maxInFlight,
    int handshakeMaxSeconds, SslContext tls) {

  /** Settings of a plaintext server without a handshake time limit. */
  ConnectionSettings(Map<String, NbdExport> exports, WorkQueue workers, int maxInFlight) {
    this(exports, workers, maxInFlight, 0, null);
  }

  /** The export a client asked for by {@code name}: exact, or the only one for the empty name. */
  NbdExport find(String name) {
    NbdExport e = exports.get(name);
    if (e == null && name.isEmpty() && exports.size() == 1) {
      e = exports.values().iterator().next();
    }
    return e;
  }
}
