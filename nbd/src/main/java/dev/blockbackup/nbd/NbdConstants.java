package dev.blockbackup.nbd;

/**
 * The NBD protocol's wire constants, named exactly as doc/proto.md of the NBD project names them
 * (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md), in one place.
 */
final class NbdConstants {

  private NbdConstants() {}

  // ---------------------------------------------------------------- handshake magics
  /** "NBDMAGIC": the first 8 bytes the server sends. */
  static final long NBDMAGIC = 0x4e42444d41474943L;
  /** "IHAVEOPT": newstyle negotiation, and the magic of each option request. */
  static final long IHAVEOPT = 0x49484156454F5054L;
  /** The magic of each option reply. */
  static final long NBD_REP_MAGIC = 0x3e889045565a9L;

  // ---------------------------------------------------------------- handshake flags (16 bits)
  static final int NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
  static final int NBD_FLAG_NO_ZEROES = 1 << 1;

  // ---------------------------------------------------------------- client flags (32 bits)
  static final int NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
  static final int NBD_FLAG_C_NO_ZEROES = 1 << 1;

  // ---------------------------------------------------------------- transmission flags (16 bits)
  static final int NBD_FLAG_HAS_FLAGS = 1 << 0;
  static final int NBD_FLAG_READ_ONLY = 1 << 1;
  static final int NBD_FLAG_SEND_FLUSH = 1 << 2;
  static final int NBD_FLAG_SEND_FUA = 1 << 3;
  static final int NBD_FLAG_ROTATIONAL = 1 << 4;
  static final int NBD_FLAG_SEND_TRIM = 1 << 5;
  static final int NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
  static final int NBD_FLAG_SEND_DF = 1 << 7;
  static final int NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
  static final int NBD_FLAG_SEND_RESIZE = 1 << 9;
  static final int NBD_FLAG_SEND_CACHE = 1 << 10;
  static final int NBD_FLAG_SEND_FAST_ZERO = 1 << 11;
  /** Extended headers: NBD_CMD_BLOCK_STATUS may carry a payload naming the contexts wanted. */
  static final int NBD_FLAG_BLOCK_STAT_PAYLOAD = 1 << 12;

  // ---------------------------------------------------------------- options
  static final int NBD_OPT_EXPORT_NAME = 1;
  static final int NBD_OPT_ABORT = 2;
  static final int NBD_OPT_LIST = 3;
  static final int NBD_OPT_PEEK_EXPORT = 4;
  static final int NBD_OPT_STARTTLS = 5;
  static final int NBD_OPT_INFO = 6;
  static final int NBD_OPT_GO = 7;
  static final int NBD_OPT_STRUCTURED_REPLY = 8;
  static final int NBD_OPT_LIST_META_CONTEXT = 9;
  static final int NBD_OPT_SET_META_CONTEXT = 10;
  static final int NBD_OPT_EXTENDED_HEADERS = 11;

  // ---------------------------------------------------------------- option reply types
  static final int NBD_REP_ACK = 1;
  static final int NBD_REP_SERVER = 2;
  static final int NBD_REP_INFO = 3;
  static final int NBD_REP_META_CONTEXT = 4;
  static final int NBD_REP_FLAG_ERROR = 1 << 31;
  static final int NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1;
  static final int NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2;
  static final int NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3;
  static final int NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4;
  static final int NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5;
  static final int NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6;
  static final int NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7;
  static final int NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8;
  static final int NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9;
  static final int NBD_REP_ERR_EXT_HEADER_REQD = NBD_REP_FLAG_ERROR | 10;

  // ---------------------------------------------------------------- NBD_REP_INFO types
  static final int NBD_INFO_EXPORT = 0;
  static final int NBD_INFO_NAME = 1;
  static final int NBD_INFO_DESCRIPTION = 2;
  static final int NBD_INFO_BLOCK_SIZE = 3;

  // ---------------------------------------------------------------- transmission magics
  static final int NBD_REQUEST_MAGIC = 0x25609513;
  static final int NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
  static final int NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
  /** After NBD_OPT_EXTENDED_HEADERS: 32-byte requests with 64-bit lengths, and 32-byte reply headers. */
  static final int NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;
  static final int NBD_EXTENDED_REPLY_MAGIC = 0x6e8a278c;

  // ---------------------------------------------------------------- commands
  static final int NBD_CMD_READ = 0;
  static final int NBD_CMD_WRITE = 1;
  static final int NBD_CMD_DISC = 2;
  static final int NBD_CMD_FLUSH = 3;
  static final int NBD_CMD_TRIM = 4;
  static final int NBD_CMD_CACHE = 5;
  static final int NBD_CMD_WRITE_ZEROES = 6;
  static final int NBD_CMD_BLOCK_STATUS = 7;

  // ---------------------------------------------------------------- command flags (16 bits)
  static final int NBD_CMD_FLAG_FUA = 1 << 0;
  static final int NBD_CMD_FLAG_NO_HOLE = 1 << 1;
  static final int NBD_CMD_FLAG_DF = 1 << 2;
  static final int NBD_CMD_FLAG_REQ_ONE = 1 << 3;
  static final int NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
  /** Extended headers only: the length is that of a payload that follows the header. */
  static final int NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5;

  // ---------------------------------------------------------------- structured replies
  static final int NBD_REPLY_FLAG_DONE = 1 << 0;
  static final int NBD_REPLY_TYPE_NONE = 0;
  static final int NBD_REPLY_TYPE_OFFSET_DATA = 1;
  static final int NBD_REPLY_TYPE_OFFSET_HOLE = 2;
  static final int NBD_REPLY_TYPE_BLOCK_STATUS = 5;
  /** Extended headers only: block status with 64-bit lengths and flags. */
  static final int NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6;
  static final int NBD_REPLY_TYPE_ERROR = (1 << 15) | 1;
  static final int NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2;

  // ---------------------------------------------------------------- base:allocation
  static final String BASE_ALLOCATION = "base:allocation";
  static final int NBD_STATE_HOLE = 1 << 0;
  static final int NBD_STATE_ZERO = 1 << 1;
  /** qemu:dirty-bitmap:NAME: the range is dirty in the bitmap. */
  static final int NBD_STATE_DIRTY = 1 << 0;

  // ---------------------------------------------------------------- errors
  static final int NBD_EPERM = 1;
  static final int NBD_EIO = 5;
  static final int NBD_ENOMEM = 12;
  static final int NBD_EINVAL = 22;
  static final int NBD_ENOSPC = 28;
  static final int NBD_EOVERFLOW = 75;
  static final int NBD_ENOTSUP = 95;
  static final int NBD_ESHUTDOWN = 108;

  // ---------------------------------------------------------------- our limits
  /** NBD_INFO_BLOCK_SIZE as qemu-nbd advertises it: minimum 1, preferred 4096, maximum 32 MiB. */
  static final int MIN_BLOCK_SIZE = 1;
  static final int PREFERRED_BLOCK_SIZE = 4096;
  static final int MAX_BLOCK_SIZE = 32 << 20;
  /** Option payloads above this are refused with NBD_REP_ERR_TOO_BIG (names are at most 4 KiB). */
  static final int MAX_OPTION_LENGTH = 64 << 10;
  /** The id of base:allocation in NBD_REP_META_CONTEXT and NBD_REPLY_TYPE_BLOCK_STATUS. */
  static final int BASE_ALLOCATION_ID = 1;

  /** The spec's name of option {@code opt}, for messages. */
  static String optionName(int opt) {
    return switch (opt) {
      case NBD_OPT_EXPORT_NAME -> "NBD_OPT_EXPORT_NAME";
      case NBD_OPT_ABORT -> "NBD_OPT_ABORT";
      case NBD_OPT_LIST -> "NBD_OPT_LIST";
      case NBD_OPT_STARTTLS -> "NBD_OPT_STARTTLS";
      case NBD_OPT_INFO -> "NBD_OPT_INFO";
      case NBD_OPT_GO -> "NBD_OPT_GO";
      case NBD_OPT_STRUCTURED_REPLY -> "NBD_OPT_STRUCTURED_REPLY";
      case NBD_OPT_LIST_META_CONTEXT -> "NBD_OPT_LIST_META_CONTEXT";
      case NBD_OPT_SET_META_CONTEXT -> "NBD_OPT_SET_META_CONTEXT";
      case NBD_OPT_EXTENDED_HEADERS -> "NBD_OPT_EXTENDED_HEADERS";
      default -> "option " + Integer.toUnsignedString(opt);
    };
  }

  /** The spec's name of command {@code type}, for messages. */
  static String commandName(int type) {
    return switch (type) {
      case NBD_CMD_READ -> "NBD_CMD_READ";
      case NBD_CMD_WRITE -> "NBD_CMD_WRITE";
      case NBD_CMD_DISC -> "NBD_CMD_DISC";
      case NBD_CMD_FLUSH -> "NBD_CMD_FLUSH";
      case NBD_CMD_TRIM -> "NBD_CMD_TRIM";
      case NBD_CMD_CACHE -> "NBD_CMD_CACHE";
      case NBD_CMD_WRITE_ZEROES -> "NBD_CMD_WRITE_ZEROES";
      case NBD_CMD_BLOCK_STATUS -> "NBD_CMD_BLOCK_STATUS";
      default -> "command " + type;
    };
  }
}
