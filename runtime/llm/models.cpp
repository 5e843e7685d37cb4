#include "runtime/llm/models.hpp"

namespace kowalski {

std::set<std::string> model_names(const std::vector<model_info>& served) {
  std::set<std::string> names;
  for (auto& m : served) {
    names.insert(m.name);
    auto colon = m.name.rfind(":latest");
    if (colon != std::string::npos && colon + 7 == m.name.size()) {
      names.insert(m.name.substr(0, colon));
    }
  }
  return names;
}

std::string model_list(const std::set<std::string>& names) {
  std::string list;
  for (auto& n : names) {
    list += (list.empty() ? "" : ", ") + n;
    if (list.size() > 200) {
      list += ", ...";
      break;
    }
  }
  return list.empty() ? "nothing" : list;
}

}  // namespace kowalski
