// Atoms that tag messages between kowalski actors; one list, shared by every node.
#pragma once

#include <caf/atom.hpp>

namespace kowalski {

using get_atom = caf::atom_constant<caf::atom("kw_get")>;
using list_atom = caf::atom_constant<caf::atom("kw_list")>;
using delete_atom = caf::atom_constant<caf::atom("kw_delete")>;
using models_atom = caf::atom_constant<caf::atom("kw_models")>;
using delta_atom = caf::atom_constant<caf::atom("kw_delta")>;
using flush_atom = caf::atom_constant<caf::atom("kw_flush")>;
using evict_atom = caf::atom_constant<caf::atom("kw_evict")>;
using children_atom = caf::atom_constant<caf::atom("kw_childs")>;
using child_atom = caf::atom_constant<caf::atom("kw_child")>;
using subscribe_atom = caf::atom_constant<caf::atom("kw_subscr")>;
using started_atom = caf::atom_constant<caf::atom("kw_started")>;
using restart_atom = caf::atom_constant<caf::atom("kw_restart")>;
using ready_atom = caf::atom_constant<caf::atom("kw_ready")>;
using stats_atom = caf::atom_constant<caf::atom("kw_stats")>;
using ping_atom = caf::atom_constant<caf::atom("kw_ping")>;
using done_atom = caf::atom_constant<caf::atom("kw_done")>;
using idle_atom = caf::atom_constant<caf::atom("kw_idle")>;
using tick_atom = caf::atom_constant<caf::atom("kw_tick")>;
using cancel_atom = caf::atom_constant<caf::atom("kw_cancel")>;
using wait_atom = caf::atom_constant<caf::atom("kw_wait")>;
using deadline_atom = caf::atom_constant<caf::atom("kw_dline")>;
using committed_atom = caf::atom_constant<caf::atom("kw_commit")>;
using batch_atom = caf::atom_constant<caf::atom("kw_batch")>;
using reset_atom = caf::atom_constant<caf::atom("kw_reset")>;
using mark_atom = caf::atom_constant<caf::atom("kw_mark")>;
using frame_atom = caf::atom_constant<caf::atom("kw_frame")>;
using exited_atom = caf::atom_constant<caf::atom("kw_exited")>;
using timeout_atom = caf::atom_constant<caf::atom("kw_tmout")>;
using session_atom = caf::atom_constant<caf::atom("kw_sess")>;

}  // namespace kowalski
