package dev.blockbackup.nbd;

import java.util.Map;

/**
 * What every connection of one server shares: the exports by name, the bounded queue to the pool
 * that runs block I/O off the event loops, the back-pressure limit (requests in flight per
 * connection) and the seconds a client has to finish its handshake (0: no limit).
 */
record ConnectionSettings(Map<String, NbdExport> exports, WorkQueue workers, int maxInFlight,
    int handshakeMaxSeconds) {

  /** Settings without a handshake time limit. */
  ConnectionSettings(Map<String, NbdExport> exports, WorkQueue workers, int maxInFlight) {
    this(exports, workers, maxInFlight, 0);
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
