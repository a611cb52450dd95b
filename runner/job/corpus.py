"""The built-in evaluation text: a few KB of plain English written for this project (public domain, CC0).

Paragraphs are separated by blank lines; `dataset.slice` selects paragraphs. The text is deliberately ordinary prose
about everyday subjects so that a trained model's loss on it is meaningful and a random model's loss is near log(V).
"""

TEXT = """\
The harbour town wakes slowly in winter. Before the sun clears the hills, the bakers have already lit their ovens, and the smell of warm bread drifts down the narrow streets toward the water. Fishing boats rock against the stone pier while their crews check nets, coil ropes and argue in low voices about the weather.

A good map is a promise that the world can be understood. It leaves out almost everything: the colour of the grass, the sound of a stream, the people who live behind each window. What remains is a set of choices about what matters for the journey at hand, and the traveller trusts that those choices were made with care.

When the library opened its doors on Saturday morning, a small crowd was already waiting outside. Children ran straight to the picture books, students claimed the long tables near the windows, and an old man in a grey coat asked the librarian, as he did every week, whether any new books about birds had arrived.

Bread needs only flour, water, salt and time. The yeast feeds on the sugars in the flour and releases gas, which the stretched gluten traps in thousands of tiny pockets. A patient baker lets the dough rise slowly in a cool room, because a slow rise gives the loaf more flavour and a better crust.

The river changes its course over many years. In flood it cuts a new channel through soft ground, and the old bend is left behind as a quiet, curved lake. Reeds grow along its edges, herons hunt in its shallows, and after a few generations most people forget that the river ever flowed there at all.

Learning to ride a bicycle is mostly learning to trust motion. A standing bicycle falls over at once, but a moving one wants to stay upright. The rider who looks at the front wheel wobbles; the rider who looks down the road, toward where she wants to go, finds that the balance takes care of itself.

Every clock in the old house told a different time. The one in the hall ran fast, the kitchen clock ran slow, and the small brass clock on the bedroom shelf had stopped at twenty past four many years ago. Nobody minded. Meals happened when people were hungry, and the day ended when the light was gone.

A garden teaches patience in a way that few other things can. Seeds planted in spring show nothing for weeks. Then, almost overnight, a row of green shoots appears, and the gardener who doubted the whole project walks the beds each evening, pulling weeds and counting leaves, already planning next year.

The train left the city a little after noon. For the first hour the view from the window was warehouses, car parks and the backs of houses; then the buildings thinned, the fields opened out, and the line followed a wide valley where sheep grazed on the slopes and a single road wound between stone walls.

Good instructions are harder to write than they look. The writer already knows how the task is done, and so forgets the small steps that a beginner cannot guess. The best way to test a set of instructions is to hand them to someone new, watch in silence, and notice every place where they hesitate.

On clear nights the sky above the valley is crowded with stars. Far from the lights of any town, the band of the galaxy stretches from one horizon to the other, and the planets shine steadily among the twinkling points. Visitors who have only seen the sky from a city often stand outside for a long time without speaking.

The market opens at dawn on Thursdays. Farmers arrive with crates of apples, potatoes and onions; a cheese maker sets out wheels of yellow cheese on a wooden board; and a woman who keeps bees sells honey in jars of every size. By ten o'clock the square is full of people, dogs, bicycles and conversation.

A bridge is a quiet argument with gravity. The engineer must know how much weight the deck will carry, how the wind will push against it, and how the steel will stretch on a hot afternoon and shrink on a frozen night. When the work is done well, nobody crossing the bridge thinks about any of this at all.

In the workshop, every tool had its place on the wall, outlined in white paint so that a missing chisel or saw could be noticed at once. The carpenter said that tidiness was not a virtue but a habit of laziness: it was simply less work to put a tool back than to spend ten minutes looking for it later.

Snow fell all through the night, and by morning the roads had disappeared. The school was closed, the buses did not run, and the only sounds in the village were the scrape of shovels and the shouts of children pulling sledges up the hill behind the church, again and again, until their fingers were too cold to hold the rope.

Translation is never a simple exchange of words. A phrase that sounds warm and friendly in one language may sound stiff or even rude in another, and a joke that depends on a double meaning may have no equivalent at all. The translator must decide, sentence by sentence, what is most important to keep.
"""
