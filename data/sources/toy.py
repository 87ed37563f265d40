"""The paper's toy sentences (section 3.1): two-half sentences and the S1/S2 triples built from them.

Every sentence has two halves [A, B], each drawn from a set of paraphrases written below.
A triple (q, s+, s-) has s+ paraphrasing both halves of q, and s- sharing one half with q
(verbatim or paraphrased) while the other half comes from a different set:

* S1 "early discriminatory, late redundant": s- shares q's *second* half, so only the
  beginning tells s+ from s-. Last-token pooling of a causal model tends to fail here.
* S2 "early redundant, late discriminatory": s- shares q's *first* half, so only the end
  tells them apart. Classical mean pooling tends to fail here: the early states never saw it.

:mod:`data.toy` writes the triples as a task folder; :func:`evaluation.tasks.evaluate_toy`
scores an encoder on it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Literal

SOURCE = "data/sources/toy.py paraphrase sets"
LICENSE = "same as this project"

Structure = Literal["S1", "S2"]
STRUCTURES: tuple[Structure, ...] = ("S1", "S2")

# Each inner list holds paraphrases of one first half (a clause with subject and action).
FIRST_HALVES: list[list[str]] = [
    ["the old fisherman mended his torn nets", "the elderly angler repaired his ripped nets", "the aged fisher fixed his damaged netting"],
    ["my sister baked a chocolate cake", "my sibling made a cocoa sponge", "my sister prepared a chocolate gateau"],
    ["the young pilot landed the small plane", "the novice aviator set down the little aircraft", "the junior flyer brought the light plane down"],
    ["the teacher graded the final exams", "the instructor marked the last tests", "the schoolteacher scored the end-of-term papers"],
    ["a stray dog dug up the garden", "a homeless hound tore up the flower beds", "an ownerless dog excavated the yard"],
    ["the mayor opened the new library", "the town leader inaugurated the fresh library", "the city's mayor unveiled the newly built library"],
    ["the children built a sandcastle", "the kids made a castle of sand", "the youngsters constructed a sand fortress"],
    ["the chef burned the onion soup", "the cook scorched the onion broth", "the head cook charred the soup made of onions"],
    ["the farmer harvested his wheat early", "the grower reaped his grain ahead of time", "the farmer gathered the wheat crop prematurely"],
    ["the students protested against the fee increase", "the pupils demonstrated against higher tuition", "the learners rallied against the rise in fees"],
    ["the doctor prescribed a new medicine", "the physician ordered a different drug", "the medic recommended a novel medication"],
    ["my neighbour painted his fence blue", "the man next door coloured his fence blue", "my neighbor gave his fence a coat of blue paint"],
    ["the orchestra rehearsed the symphony", "the ensemble practised the symphonic piece", "the philharmonic ran through the symphony"],
    ["the hikers lost their way in the forest", "the walkers got lost in the woods", "the trekkers went astray among the trees"],
    ["the engineer fixed the broken bridge", "the technician repaired the damaged bridge", "the engineer mended the cracked overpass"],
    ["the company fired its chief executive", "the firm dismissed its CEO", "the corporation sacked its top boss"],
    ["the cat knocked over the vase", "the kitten tipped over the flower vase", "the feline toppled the vase"],
    ["the scientist discovered a new comet", "the researcher found a previously unknown comet", "the astronomer spotted a novel comet"],
    ["the baby finally fell asleep", "the infant at last dozed off", "the newborn eventually drifted off to sleep"],
    ["the thief stole a golden necklace", "the robber took a gold chain", "the burglar swiped a necklace made of gold"],
    ["the team won the championship", "the squad claimed the title", "the side took home the championship trophy"],
    ["the river flooded the village", "the stream overflowed into the hamlet", "the river burst its banks and swamped the village"],
    ["my grandmother knitted a warm scarf", "my granny knit a cosy scarf", "my grandma made a warm woollen scarf"],
    ["the waiter spilled coffee on the customer", "the server splashed coffee onto the patron", "the waiter dropped coffee over the diner"],
    ["the poet read her latest poem", "the writer recited her newest verse", "the poet performed her most recent poem"],
    ["the mechanic replaced the car's engine", "the repairman swapped out the vehicle's motor", "the garage worker installed a new engine in the car"],
    ["the volunteers planted trees in the park", "the helpers put saplings in the park", "the volunteers planted young trees in the public garden"],
    ["the singer cancelled her concert", "the vocalist called off her show", "the singer scrapped her gig"],
    ["the boy broke his arm", "the lad fractured his arm", "the young boy snapped a bone in his arm"],
    ["the government raised taxes", "the state increased taxation", "the authorities hiked taxes"],
]

# Each inner list holds paraphrases of one second half (a continuation of any first half).
SECOND_HALVES: list[list[str]] = [
    ["before the sun came up", "prior to sunrise", "ahead of dawn"],
    ["because the storm was approaching", "since a storm was coming", "as bad weather was on its way"],
    ["while everyone else was sleeping", "as the rest of the household slept", "when all the others were asleep"],
    ["after the long meeting ended", "once the lengthy meeting was over", "when the drawn-out meeting finished"],
    ["despite the heavy rain", "in spite of the downpour", "even though it was pouring"],
    ["and then went home to rest", "and afterwards headed home to relax", "then returned home for some rest"],
    ["to celebrate the national holiday", "in honour of the national holiday", "to mark the country's holiday"],
    ["although nobody had asked for it", "even though no one requested it", "though no one had wanted it"],
    ["during the hottest week of summer", "in the warmest week of the summer", "over the most scorching week of summer"],
    ["so the whole town was talking about it", "and the entire town gossiped about it", "which left the whole town discussing it"],
    ["in front of a large crowd", "before a big audience", "with a huge crowd watching"],
    ["for the first time in ten years", "for the first time in a decade", "which had not happened in ten years"],
    ["without telling anyone", "without informing a single person", "keeping it secret from everyone"],
    ["just before the holidays began", "right before the holiday season started", "shortly before the vacation began"],
    ["and the newspapers reported it the next day", "and the press covered it the following day", "which made the papers the next morning"],
    ["while the band played in the background", "as the musicians performed nearby", "with a band playing behind them"],
    ["even though the budget was tiny", "despite having very little money", "in spite of a very small budget"],
    ["on a cold winter morning", "one freezing morning in winter", "on a chilly winter's morning"],
    ["because the old one had worn out", "since the previous one was worn out", "as the old one was no longer usable"],
    ["after months of careful planning", "following months of meticulous preparation", "after planning it carefully for months"],
    ["and nobody could believe it", "and no one could quite believe it", "which nobody found believable"],
    ["late on a Friday night", "late one Friday evening", "on a Friday, late at night"],
    ["to the surprise of everyone present", "surprising everyone who was there", "which astonished all who were present"],
    ["while the whole family watched", "as the relatives looked on", "with the entire family looking on"],
    ["in the middle of the afternoon", "halfway through the afternoon", "in mid-afternoon"],
    ["as the city lights came on", "when the town's lights switched on", "as the streetlights lit up the city"],
    ["for a charity fundraiser", "to raise money for charity", "as part of a charity fundraising event"],
    ["right after the earthquake", "immediately following the earthquake", "just after the quake struck"],
    ["with the help of some friends", "assisted by a few friends", "with a little help from friends"],
    ["on the last day of the year", "on New Year's Eve", "on the final day of the year"],
]


@dataclass(frozen=True)
class ToySentence:
    """A two-half sentence; ``first_set``/``second_set`` index FIRST_HALVES/SECOND_HALVES."""

    first_set: int
    first_variant: int
    second_set: int
    second_variant: int

    @property
    def halves(self) -> tuple[str, str]:
        return FIRST_HALVES[self.first_set][self.first_variant], SECOND_HALVES[self.second_set][self.second_variant]

    @property
    def text(self) -> str:
        first, second = self.halves
        return f"{first[0].upper()}{first[1:]} {second}."


@dataclass(frozen=True)
class ToyTriple:
    """One (q, s+, s-) item of a structure."""

    structure: Structure
    query: ToySentence
    positive: ToySentence
    negative: ToySentence


def generate_triples(structure: Structure, n: int = 300, seed: int = 0) -> list[ToyTriple]:
    """Draw ``n`` triples of ``structure`` ("S1" or "S2"); the same seed gives the same triples.

    Queries are distinct (first set, second set) pairs. s+ uses a different paraphrase of
    both of q's halves. s-'s shared half is any paraphrase of q's (so sometimes verbatim);
    its other half comes from a different paraphrase set. Raises ValueError for a bad
    structure or an ``n`` above the number of distinct queries.
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    pairs = list(itertools.product(range(len(FIRST_HALVES)), range(len(SECOND_HALVES))))
    if not 1 <= n <= len(pairs):
        raise ValueError(f"n must be between 1 and {len(pairs)} (distinct queries), got {n}")
    # Seeding with the structure too keeps S1 and S2 from drawing identical query lists.
    rng = random.Random(f"{seed}-{structure}")

    def other(count: int, excluded: int) -> int:
        return rng.choice([i for i in range(count) if i != excluded])

    triples = []
    for first_set, second_set in rng.sample(pairs, n):
        first_variant = rng.randrange(len(FIRST_HALVES[first_set]))
        second_variant = rng.randrange(len(SECOND_HALVES[second_set]))
        query = ToySentence(first_set, first_variant, second_set, second_variant)
        positive = ToySentence(
            first_set,
            other(len(FIRST_HALVES[first_set]), first_variant),
            second_set,
            other(len(SECOND_HALVES[second_set]), second_variant),
        )
        if structure == "S1":  # shares the second half; the first half differs
            new_first = other(len(FIRST_HALVES), first_set)
            negative = ToySentence(
                new_first,
                rng.randrange(len(FIRST_HALVES[new_first])),
                second_set,
                rng.randrange(len(SECOND_HALVES[second_set])),
            )
        else:  # S2: shares the first half; the second half differs
            new_second = other(len(SECOND_HALVES), second_set)
            negative = ToySentence(
                first_set,
                rng.randrange(len(FIRST_HALVES[first_set])),
                new_second,
                rng.randrange(len(SECOND_HALVES[new_second])),
            )
        triples.append(ToyTriple(structure, query, positive, negative))
    return triples
