// LMDB environment and record encodings.
#include "runtime/store/store.hpp"

#include <cstring>
#include <filesystem>
#include <map>

#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <lmdb.h>

namespace kowalski::store {

namespace {

constexpr char record_version = 1;

std::string lmdb_error(const char* op, std::string_view name, int rc) {
  return std::string{op} + " " + std::string{name} + ": " + mdb_strerror(rc);
}

MDB_val as_val(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}

std::string_view as_view(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

// Read transactions are short and always aborted; this keeps that tidy.
struct read_txn {
  MDB_txn* txn = nullptr;
  ~read_txn() {
    if (txn != nullptr) {
      mdb_txn_abort(txn);
    }
  }
};

// Turns gained the memory they were answered with: version 2. Version 1
// turns (without it) are still read.
constexpr char turn_version = 2;

template <class T>
std::string encode_record(const T& x, char version = record_version) {
  std::vector<char> buf;
  buf.push_back(version);
  caf::binary_serializer sink{nullptr, buf};
  auto copy = x;
  if (auto err = sink(copy)) {
    return {};
  }
  return std::string{buf.begin(), buf.end()};
}

template <class T>
bool decode_record(std::string_view bytes, T& x, char version = record_version) {
  if (bytes.empty() || bytes[0] != version) {
    return false;
  }
  caf::binary_deserializer source{nullptr, bytes.data() + 1, bytes.size() - 1};
  return !source(x);
}

}  // namespace

struct environment::impl {
  MDB_env* env = nullptr;
  std::map<std::string, MDB_dbi, std::less<>> dbis;

  ~impl() {
    if (env != nullptr) {
      mdb_env_close(env);
    }
  }

  bool dbi(std::string_view name, MDB_dbi& out, std::string& error) const {
    auto i = dbis.find(name);
    if (i == dbis.end()) {
      error = "unknown database " + std::string{name};
      return false;
    }
    out = i->second;
    return true;
  }
};

environment::~environment() = default;

std::shared_ptr<environment> environment::open(const std::string& dir,
                                               std::size_t map_size,
                                               std::string& error) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    error = "create directory " + dir + ": " + ec.message();
    return nullptr;
  }

  std::shared_ptr<environment> self{new environment};
  self->impl_ = std::make_unique<impl>();
  self->path_ = dir;
  auto& env = self->impl_->env;
  int rc = mdb_env_create(&env);
  if (rc == 0) {
    rc = mdb_env_set_mapsize(env, map_size);
  }
  if (rc == 0) {
    rc = mdb_env_set_maxdbs(env, 32);
  }
  if (rc == 0) {
    rc = mdb_env_set_maxreaders(env, 256);
  }
  if (rc == 0) {
    // NOTLS: actors resume on other threads, so read transactions must not be
    // tied to the thread that began them.
    rc = mdb_env_open(env, dir.c_str(), MDB_NOTLS, 0640);
  }
  if (rc != 0) {
    error = lmdb_error("open environment", dir, rc);
    return nullptr;
  }

  // Clear reader slots left behind by a process that was killed.
  int dead = 0;
  mdb_reader_check(env, &dead);

  MDB_txn* txn = nullptr;
  rc = mdb_txn_begin(env, nullptr, 0, &txn);
  if (rc != 0) {
    error = lmdb_error("begin transaction in", dir, rc);
    return nullptr;
  }
  for (auto name : database_names) {
    MDB_dbi dbi;
    rc = mdb_dbi_open(txn, name, MDB_CREATE, &dbi);
    if (rc != 0) {
      mdb_txn_abort(txn);
      error = lmdb_error("open database", name, rc);
      return nullptr;
    }
    self->impl_->dbis.emplace(name, dbi);
  }
  rc = mdb_txn_commit(txn);
  if (rc != 0) {
    error = lmdb_error("commit databases of", dir, rc);
    return nullptr;
  }
  return self;
}

namespace {

bool get_in(MDB_txn* txn, MDB_dbi dbi, std::string_view db, std::string_view key,
            std::string& value, std::string& error) {
  auto k = as_val(key);
  MDB_val v;
  int rc = mdb_get(txn, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) {
    error.clear();
    return false;
  }
  if (rc != 0) {
    error = lmdb_error("get from", db, rc);
    return false;
  }
  value.assign(static_cast<const char*>(v.mv_data), v.mv_size);
  return true;
}

bool scan_in(MDB_txn* txn, MDB_dbi dbi, std::string_view db, std::string_view prefix,
             std::string_view from,
             const std::function<bool(std::string_view, std::string_view)>& fn,
             std::string& error) {
  MDB_cursor* cursor = nullptr;
  int rc = mdb_cursor_open(txn, dbi, &cursor);
  if (rc != 0) {
    error = lmdb_error("open cursor on", db, rc);
    return false;
  }
  auto start = from.empty() || from < prefix ? prefix : from;
  auto k = as_val(start);
  MDB_val v;
  rc = mdb_cursor_get(cursor, &k, &v, start.empty() ? MDB_FIRST : MDB_SET_RANGE);
  while (rc == 0) {
    auto key = as_view(k);
    if (key.substr(0, prefix.size()) != prefix || !fn(key, as_view(v))) {
      break;
    }
    rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cursor);
  if (rc != 0 && rc != MDB_NOTFOUND) {
    error = lmdb_error("iterate", db, rc);
    return false;
  }
  return true;
}

}  // namespace

// The reader handed to environment::read(): one transaction for all reads.
class txn_reader : public reader {
public:
  txn_reader(const environment::impl& env, MDB_txn* txn) : env_(env), txn_(txn) {
  }

  bool get(std::string_view db, std::string_view key, std::string& value,
           std::string& error) const override {
    MDB_dbi dbi;
    return env_.dbi(db, dbi, error) && get_in(txn_, dbi, db, key, value, error);
  }

  bool scan(std::string_view db, std::string_view prefix, std::string_view from,
            const std::function<bool(std::string_view, std::string_view)>& fn,
            std::string& error) const override {
    MDB_dbi dbi;
    return env_.dbi(db, dbi, error) && scan_in(txn_, dbi, db, prefix, from, fn, error);
  }

private:
  const environment::impl& env_;
  MDB_txn* txn_;
};

bool environment::read(const std::function<bool(const reader&)>& fn,
                       std::string& error) const {
  read_txn r;
  int rc = mdb_txn_begin(impl_->env, nullptr, MDB_RDONLY, &r.txn);
  if (rc != 0) {
    error = lmdb_error("begin read of", path_, rc);
    return false;
  }
  return fn(txn_reader{*impl_, r.txn});
}

bool environment::get(std::string_view db, std::string_view key, std::string& value,
                      std::string& error) const {
  return read([&](const reader& r) { return r.get(db, key, value, error); }, error);
}

bool environment::scan(
  std::string_view db, std::string_view prefix, std::string_view from,
  const std::function<bool(std::string_view, std::string_view)>& fn,
  std::string& error) const {
  return read([&](const reader& r) { return r.scan(db, prefix, from, fn, error); }, error);
}

bool environment::apply(const std::vector<const write_batch*>& batches,
                        std::string& error) {
  MDB_txn* txn = nullptr;
  int rc = mdb_txn_begin(impl_->env, nullptr, 0, &txn);
  if (rc != 0) {
    error = lmdb_error("begin write in", path_, rc);
    return false;
  }
  auto fail = [&](const char* op, std::string_view name, int code) {
    mdb_txn_abort(txn);
    error = lmdb_error(op, name, code);
    return false;
  };

  for (auto batch : batches) {
    for (auto& op : batch->ops) {
      MDB_dbi dbi;
      if (!impl_->dbi(op.db, dbi, error)) {
        mdb_txn_abort(txn);
        return false;
      }
      auto k = as_val(op.key);
      if (op.kind == kv_op::put) {
        auto v = as_val(op.value);
        rc = mdb_put(txn, dbi, &k, &v, 0);
        if (rc != 0) {
          return fail("put into", op.db, rc);
        }
      } else if (op.kind == kv_op::erase) {
        rc = mdb_del(txn, dbi, &k, nullptr);
        if (rc != 0 && rc != MDB_NOTFOUND) {
          return fail("delete from", op.db, rc);
        }
      } else if (op.kind == kv_op::erase_existing) {
        rc = mdb_del(txn, dbi, &k, nullptr);
        if (rc == MDB_NOTFOUND) {
          mdb_txn_abort(txn);
          error = std::string{absent_key} + op.db + "/" + op.key;
          return false;
        }
        if (rc != 0) {
          return fail("delete from", op.db, rc);
        }
      } else {
        MDB_cursor* cursor = nullptr;
        rc = mdb_cursor_open(txn, dbi, &cursor);
        if (rc != 0) {
          return fail("open cursor on", op.db, rc);
        }
        MDB_val v;
        rc = mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && as_view(k).substr(0, op.key.size()) == op.key) {
          rc = mdb_cursor_del(cursor, 0);
          if (rc == 0) {
            rc = mdb_cursor_get(cursor, &k, &v, MDB_GET_CURRENT);
          }
        }
        mdb_cursor_close(cursor);
        if (rc != 0 && rc != MDB_NOTFOUND && rc != EINVAL) {
          return fail("delete range from", op.db, rc);
        }
      }
    }
  }

  // The commit returns after fsync: only then is anything "stored".
  rc = mdb_txn_commit(txn);
  if (rc != 0) {
    error = lmdb_error("commit in", path_, rc);
    return false;
  }
  return true;
}

bool environment::healthy(std::string& error) const {
  read_txn r;
  int rc = mdb_txn_begin(impl_->env, nullptr, MDB_RDONLY, &r.txn);
  if (rc != 0) {
    error = lmdb_error("begin read of", path_, rc);
    return false;
  }
  MDB_stat st;
  rc = mdb_stat(r.txn, impl_->dbis.begin()->second, &st);
  if (rc != 0) {
    error = lmdb_error("stat", path_, rc);
    return false;
  }
  return true;
}

std::string encode_seq(uint64_t seq) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(seq & 0xFF);
    seq >>= 8;
  }
  return out;
}

uint64_t decode_seq(std::string_view bytes) {
  uint64_t seq = 0;
  for (std::size_t i = 0; i < 8 && i < bytes.size(); ++i) {
    seq = (seq << 8) | static_cast<unsigned char>(bytes[i]);
  }
  return seq;
}

std::string encode(const conversation_info& x) {
  return encode_record(x);
}

std::string encode(const turn& x) {
  return encode_record(x, turn_version);
}

bool decode(std::string_view bytes, conversation_info& x) {
  return decode_record(bytes, x);
}

bool decode(std::string_view bytes, turn& x) {
  if (!bytes.empty() && bytes[0] == record_version) {
    // The first layout: the fields before `memory`, in order.
    caf::binary_deserializer source{nullptr, bytes.data() + 1, bytes.size() - 1};
    x.memory.clear();
    return !source(x.seq, x.role, x.content, x.created_ms, x.model, x.prompt_tokens,
                   x.completion_tokens, x.replayed);
  }
  return decode_record(bytes, x, turn_version);
}

std::string encode(const batch_info& x) {
  return encode_record(x);
}

std::string encode(const batch_item& x) {
  return encode_record(x);
}

std::string encode(const batch_item_result& x) {
  return encode_record(x);
}

bool decode(std::string_view bytes, batch_info& x) {
  return decode_record(bytes, x);
}

bool decode(std::string_view bytes, batch_item& x) {
  return decode_record(bytes, x);
}

bool decode(std::string_view bytes, batch_item_result& x) {
  return decode_record(bytes, x);
}

std::string encode(const rlm_run_info& x) {
  return encode_record(x);
}

std::string encode(const rlm_turn& x) {
  return encode_record(x);
}

bool decode(std::string_view bytes, rlm_run_info& x) {
  return decode_record(bytes, x);
}

bool decode(std::string_view bytes, rlm_turn& x) {
  return decode_record(bytes, x);
}

std::string encode(const rlm_sub_call& x) {
  return encode_record(x);
}

bool decode(std::string_view bytes, rlm_sub_call& x) {
  return decode_record(bytes, x);
}

std::string encode(const memory_item& x) {
  return encode_record(x);
}

bool decode(std::string_view bytes, memory_item& x) {
  return decode_record(bytes, x);
}

std::string encode(const add_memories& x) {
  return encode_record(x);
}

bool decode(std::string_view bytes, add_memories& x) {
  return decode_record(bytes, x);
}

std::string encode(const triple& x) {
  return encode_record(x);
}

bool decode(std::string_view bytes, triple& x) {
  return decode_record(bytes, x);
}

std::string item_key(const std::string& batch_id, uint64_t index) {
  return batch_id + encode_seq(index);
}

std::string items_of(const std::string& id) {
  return id + std::string(1, '\0');
}

std::string turn_key(const std::string& conversation_id, uint64_t seq) {
  return conversation_id + encode_seq(seq);
}

}  // namespace kowalski::store
